"""The files of a Matrix message as the plugin keeps them: references (kind, mimetype, name, mxc,
size, and the key of an encrypted file), stored with the context as JSON, never their bytes."""

from __future__ import annotations

import json
from typing import Any

from mautrix.types import MessageEvent

from ..agents.files import AUDIO, FILE, IMAGE, VIDEO, Attachment
from .kinds import guess_mimetype

# Matrix message types that carry a file; a sticker arrives as its own event type, which mautrix
# gives the message type m.sticker (see `startup.backlog.parse_event`).
KINDS = {"m.image": IMAGE, "m.sticker": IMAGE, "m.audio": AUDIO, "m.video": VIDEO, "m.file": FILE}
VOICE_KEY = "org.matrix.msc3245.voice"


def carries_file(evt: MessageEvent) -> bool:
    """Whether the message is of a type that carries a file: cheap, no parsing."""
    msgtype = evt.content.msgtype
    return str(msgtype.value if hasattr(msgtype, "value") else msgtype) in KINDS


def media_of(evt: MessageEvent) -> tuple[str, list[Attachment]]:
    """A message's text and its files: a media message's caption and its file."""
    content = evt.content.serialize()
    att = attachment_of(content)
    return caption_of(content), [att] if att else []


def attachment_of(content: dict[str, Any]) -> Attachment | None:
    """The file a message's content carries, or None for a message without one."""
    kind = KINDS.get(content.get("msgtype") or "")
    if kind is None:
        return None
    encryption = content.get("file") if isinstance(content.get("file"), dict) else None
    mxc = (encryption or {}).get("url") if encryption else content.get("url")
    if not isinstance(mxc, str) or not mxc.startswith("mxc://"):
        return None
    info = content.get("info") if isinstance(content.get("info"), dict) else {}
    name = _text(content.get("filename")) or _text(content.get("body")) or kind
    size = info.get("size")
    return Attachment(
        kind=kind,
        mimetype=_text(info.get("mimetype")) or guess_mimetype(name),
        name=name[:200],
        size=size if isinstance(size, int) and size >= 0 else 0,
        mxc=mxc,
        encryption=encryption,
        voice=VOICE_KEY in content,
    )


def caption_of(content: dict[str, Any]) -> str:
    """A media message's caption (MSC2530): its body, when a file name differs from it."""
    body, filename = _text(content.get("body")), _text(content.get("filename"))
    return body.strip() if filename and body and body != filename else ""


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def to_json(attachments: tuple[Attachment, ...] | list[Attachment]) -> str:
    """References for the context; "" for none, the column's default."""
    if not attachments:
        return ""
    return json.dumps([_ref(a) for a in attachments])


def _ref(att: Attachment) -> dict[str, Any]:
    ref: dict[str, Any] = {
        "kind": att.kind,
        "mimetype": att.mimetype,
        "name": att.name,
        "size": att.size,
        "mxc": att.mxc,
    }
    if att.encryption:
        ref["file"] = att.encryption
    if att.voice:
        ref["voice"] = True
    if att.inlined:
        ref["inlined"] = True
    return ref


def from_json(text: str) -> tuple[Attachment, ...]:
    """The references of a stored turn; what cannot be read is left out."""
    if not text:
        return ()
    try:
        refs = json.loads(text)
    except json.JSONDecodeError:
        return ()
    result = []
    for ref in refs if isinstance(refs, list) else []:
        if not isinstance(ref, dict) or not isinstance(ref.get("mxc"), str):
            continue
        result.append(
            Attachment(
                kind=_text(ref.get("kind")) or FILE,
                mimetype=_text(ref.get("mimetype")) or "application/octet-stream",
                name=_text(ref.get("name")) or "file",
                size=ref.get("size") if isinstance(ref.get("size"), int) else 0,
                mxc=ref["mxc"],
                encryption=ref.get("file") if isinstance(ref.get("file"), dict) else None,
                voice=ref.get("voice") is True,
                inlined=ref.get("inlined") is True,
            )
        )
    return tuple(result)
