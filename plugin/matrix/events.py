"""Reading single events back from the homeserver, decrypted where the room is encrypted, with
the bot's own edits applied: what a thread's root or a reacted-to answer says now."""

from __future__ import annotations

from typing import Any

from mautrix.api import Method, Path
from mautrix.errors import MatrixError

from .encryption import ENCRYPTED, Encryption

# The bot's edits of one event read back to find its latest: a streamed answer has at most
# `dispatch.max_edits` of them, plus its final edit.
EDIT_PAGE = 100


async def plain(encryption: Encryption, room_id: str, raw: dict[str, Any]) -> dict[str, Any] | None:
    """The event as its sender wrote it: decrypted, or None when it cannot be."""
    if raw.get("type") != ENCRYPTED:
        return raw
    return await encryption.decrypt(room_id, raw)


async def read_event(encryption: Encryption, room_id: str, event_id: str) -> dict[str, Any] | None:
    """One event, decrypted; None if the homeserver does not give it (or it cannot be read)."""
    try:
        path = Path.v3.rooms[room_id].event[event_id]
        raw = await encryption.client.api.request(Method.GET, path)
    except MatrixError:
        return None
    return await plain(encryption, room_id, raw)


async def current_content(
    encryption: Encryption, room_id: str, event: dict[str, Any]
) -> dict[str, Any]:
    """The content of one of the bot's events with its latest edit applied (only the bot's own
    edits count: an edit by anyone else is not valid)."""
    client = encryption.client
    content = event.get("content") or {}
    if event.get("sender") != client.mxid:
        return content
    try:
        page = await client.api.request(
            Method.GET,
            Path.v1.rooms[room_id].relations[event["event_id"]]["m.replace"],
            query_params={"dir": "b", "limit": str(EDIT_PAGE)},
        )
    except MatrixError:
        return content
    for raw in page.get("chunk") or []:
        edit = await plain(encryption, room_id, raw) if raw.get("sender") == client.mxid else None
        new = (edit or {}).get("content", {}).get("m.new_content")
        if isinstance(new, dict):
            return {**new, "m.relates_to": content.get("m.relates_to")}
    return content
