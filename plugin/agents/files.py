"""Files between users and agents: what a message carries (`Attachment`), what an agent answers
with (`OutFile`), and request bodies that stream attachment data as base64 (`Blobs`).

An attachment is held once, as the bytes that were downloaded. A request body refers to it by a
marker; the base64 text is made chunk by chunk while the body is sent, so the data is never
copied whole into a JSON string (that would hold it about three times over).
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

from attrs import define, field, frozen

IMAGE = "image"
AUDIO = "audio"
VIDEO = "video"
FILE = "file"
# Raw bytes per base64 chunk while a body is sent: a multiple of 3, so chunks join cleanly.
_B64_CHUNK = 3 * 16 * 1024


@frozen
class Attachment:
    """A file of a message, as the context keeps it (a reference), and with its bytes (`data`)
    while a request that sends it is made. The encryption info holds a key: never logged."""

    # "image", "audio", "video" or "file": the Matrix message type it came as.
    kind: str
    mimetype: str
    name: str
    size: int
    mxc: str
    # The EncryptedFile of an encrypted room (key, iv, hash), to decrypt the download.
    encryption: dict[str, Any] | None = field(default=None, repr=False)
    # A voice message (MSC3245).
    voice: bool = False
    # Its content is part of the message's text already (a transcript, an inlined text file).
    inlined: bool = False
    data: bytes | bytearray | None = field(default=None, repr=False, eq=False)

    def label(self) -> str:
        """How the agent sees an attachment whose bytes are not sent: `[image: cat.png]`."""
        return f"[{self.kind}: {self.name}]"


@define(eq=False)
class OutFile:
    """A file an agent answered with, to upload and post as a reply."""

    mimetype: str
    name: str
    data: bytes | bytearray | None = field(repr=False)
    # The message's caption (MSC2530); empty for none.
    caption: str = ""
    # Post it as a voice message (MSC3245).
    voice: bool = False
    # Set by the outbox as it uploads: the EncryptedFile of an encrypted room (the bytes are
    # ciphertext from then on), and the content keys that locate the upload.
    encryption: dict[str, Any] | None = field(default=None, repr=False)
    location: dict[str, Any] | None = field(default=None, repr=False)
    # Set once it is posted: its reference for the context.
    posted: Attachment | None = None

    @property
    def size(self) -> int:
        return len(self.data or b"")


def b64_size(size: int) -> int:
    return 4 * -(-size // 3)


@define(eq=False)
class Blobs:
    """Attachment data that a JSON body refers to by markers (see the module's doc)."""

    _data: dict[str, bytes | bytearray] = field(factory=dict)
    _tag: str = field(factory=lambda: uuid.uuid4().hex)

    def ref(self, data: bytes | bytearray) -> str:
        """A marker to put into the body where the data's base64 text goes."""
        marker = f"@@blob-{self._tag}-{len(self._data)}@@"
        self._data[marker] = data
        return marker

    def __bool__(self) -> bool:
        return bool(self._data)

    def encode(self, body: dict[str, Any]) -> tuple[list[bytes | str], int]:
        """The body as JSON pieces (bytes) and markers, and its size in bytes once encoded."""
        text = json.dumps(body)
        pieces: list[bytes | str] = []
        size = 0
        for n, piece in enumerate(re.split(f"(@@blob-{self._tag}-\\d+@@)", text)):
            if n % 2:
                pieces.append(piece)
                size += b64_size(len(self._data[piece]))
            else:
                pieces.append(piece.encode())
                size += len(pieces[-1])
        return pieces, size

    async def stream(self, pieces: list[bytes | str]) -> AsyncIterator[bytes]:
        for piece in pieces:
            if isinstance(piece, bytes):
                yield piece
                continue
            view = memoryview(self._data[piece])
            for start in range(0, len(view), _B64_CHUNK):
                yield base64.b64encode(view[start : start + _B64_CHUNK])
