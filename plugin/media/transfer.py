"""Downloads of a message's file from the homeserver, streamed and stopped at the size cap.

Authenticated media (`/_matrix/client/v1/media/download`, Matrix 1.11) first, with the bot's
token; the legacy `/_matrix/media/v3/download` when the homeserver does not offer it. The bytes go
into one buffer, sized from Content-Length when the server gives it; a file of an encrypted room
is decrypted in that buffer. Uploads go through the outbox (`matrix.outbox`), like everything
the bot sends.
"""

from __future__ import annotations

import asyncio
from logging import Logger
from urllib.parse import quote

import aiohttp
from attrs import define
from maubot.matrix import MaubotMatrixClient

from ..agents.files import Attachment
from .crypto import CryptoUnavailable, decrypt_in_place

CHUNK = 64 * 1024
TIMEOUT = aiohttp.ClientTimeout(total=300, sock_read=60)
_PATHS = ("/_matrix/client/v1/media/download/", "/_matrix/media/v3/download/")
# Answers of a homeserver that has no authenticated media: then the legacy path is tried.
_NO_V1 = (400, 404, 405, 501)


class MediaFailed(Exception):
    """The file could not be had. The message says why, for the user."""


class TooLarge(MediaFailed):
    def __init__(self, name: str, limit: int) -> None:
        super().__init__(
            f"`{name}` is larger than the {_megabytes(limit)} this bot accepts, so it did not "
            "go to the agent."
        )


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.3g} MB" if size >= 100_000 else f"{size} bytes"


def parse_mxc(mxc: str) -> tuple[str, str]:
    server, _, media_id = mxc.removeprefix("mxc://").partition("/")
    if not mxc.startswith("mxc://") or not server or not media_id or "/" in media_id:
        raise MediaFailed("the file's address is not a valid mxc:// URI")
    return server, media_id


@define(eq=False)
class Downloads:
    client: MaubotMatrixClient
    log: Logger

    async def fetch(self, att: Attachment, limit: int) -> bytearray:
        """The file's bytes, decrypted; raises TooLarge past `limit`, MediaFailed otherwise."""
        if att.size > limit:
            raise TooLarge(att.name, limit)
        server, media_id = parse_mxc(att.mxc)
        try:
            data = await self._download(f"{quote(server)}/{quote(media_id)}", att.name, limit)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            self.log.warning(f"Downloading {att.mxc} failed: {type(e).__name__}: {e}")
            raise MediaFailed(f"`{att.name}` could not be downloaded ({type(e).__name__})") from e
        if att.encryption:
            try:
                decrypt_in_place(data, att.encryption)
            except (CryptoUnavailable, ValueError) as e:
                raise MediaFailed(f"`{att.name}` could not be decrypted: {e}") from e
        return data

    async def _download(self, media: str, name: str, limit: int) -> bytearray:
        api = self.client.api
        headers = {"Authorization": f"Bearer {api.token}"}
        for n, prefix in enumerate(_PATHS):
            path = api.base_url.raw_path.rstrip("/") + prefix + media
            url = api.base_url.with_path(path, encoded=True)
            async with api.session.get(url, headers=headers, timeout=TIMEOUT) as resp:
                if n == 0 and resp.status in _NO_V1:
                    continue
                if resp.status >= 300:
                    raise MediaFailed(f"`{name}` could not be downloaded (HTTP {resp.status})")
                return await _read_capped(resp, name, limit)
        raise AssertionError("unreachable")


async def _read_capped(resp: aiohttp.ClientResponse, name: str, limit: int) -> bytearray:
    """The body in one buffer; stops reading, and raises, once it passes `limit`."""
    declared = resp.content_length
    if declared is not None and declared > limit:
        raise TooLarge(name, limit)
    data = bytearray(declared or 0)
    size = 0
    async for chunk in resp.content.iter_chunked(CHUNK):
        end = size + len(chunk)
        if end > limit:
            raise TooLarge(name, limit)
        if end <= len(data):
            data[size:end] = chunk
        else:
            data[size:] = chunk
        size = end
    del data[size:]
    return data
