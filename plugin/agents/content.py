"""How the backends show a turn's files to an agent: the OpenAI content parts, the http
contract's attachment objects, and labels for files whose bytes are not sent."""

from __future__ import annotations

from typing import Any

from ..media.kinds import PDF, PICTURE, category
from .files import Attachment, Blobs


def with_labels(text: str, attachments: tuple[Attachment, ...]) -> str:
    """The text, with a label for each file that is not inlined and not sent: `[image: x]`."""
    labels = [a.label() for a in attachments if a.data is None and not a.inlined]
    return "\n".join([text, *labels]) if text else "\n".join(labels)


def chat_message(
    role: str, text: str, attachments: tuple[Attachment, ...], blobs: Blobs
) -> dict[str, Any]:
    """One OpenAI chat message: plain text, or content parts when files go along (only a user
    message may carry them)."""
    sends = role == "user"
    sent = [a for a in attachments if a.data is not None and sends]
    text = with_labels(text, tuple(a for a in attachments if a.data is None or not sends))
    if not sent:
        return {"role": role, "content": text}
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for att in sent:
        assert att.data is not None
        url = f"data:{att.mimetype};base64,{blobs.ref(att.data)}"
        if category(att) == PICTURE:
            parts.append({"type": "image_url", "image_url": {"url": url}})
        elif category(att) == PDF:
            parts.append({"type": "file", "file": {"filename": att.name, "file_data": url}})
    return {"role": role, "content": parts}


def contract_attachment(att: Attachment, blobs: Blobs) -> dict[str, Any]:
    """One entry of the http contract's `attachments`: with `data_base64` when it is sent."""
    entry: dict[str, Any] = {
        "kind": att.kind,
        "mimetype": att.mimetype,
        "name": att.name,
        "size": att.size,
        "mxc": att.mxc,
    }
    if att.data is not None:
        entry["data_base64"] = blobs.ref(att.data)
    return entry
