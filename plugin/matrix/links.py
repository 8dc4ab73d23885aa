"""Space links: the Space's `m.space.child` and the room's canonical `m.space.parent`.

The one implementation, for onboarding, new rooms, archiving and reconciliation's repairs.
Writing a link that exists changes nothing; empty content is how Matrix deletes one.
"""

from __future__ import annotations

from typing import Any

from mautrix.types import EventType

from .outbox import Outbox

CHILD = str(EventType.SPACE_CHILD)
PARENT = str(EventType.SPACE_PARENT)


def is_bot_link(event: dict[str, Any] | None, bot_id: str) -> bool:
    """A link counts only if the bot sent it, and it is not a removed (empty) link."""
    return bool(event and event.get("sender") == bot_id and (event.get("content") or {}).get("via"))


def parent_content(via: str) -> dict[str, Any]:
    """The room's side of the link, marked canonical: a working room has exactly one Space."""
    return {"via": [via], "canonical": True}


class SpaceLinks:
    def __init__(self, outbox: Outbox, server_name: str) -> None:
        self.outbox = outbox
        self.via = server_name

    async def link_child(self, space_id: str, room_id: str) -> None:
        """The Space's side of the link. Only the bot may send it (power levels)."""
        await self.outbox.state(space_id, CHILD, {"via": [self.via]}, room_id)

    async def link_parent(self, room_id: str, space_id: str) -> None:
        await self.outbox.state(room_id, PARENT, parent_content(self.via), space_id)

    async def link(self, space_id: str, room_id: str, old_space_id: str | None = None) -> None:
        """Writes both sides, and drops the room's link to an older Space it moved from."""
        await self.link_child(space_id, room_id)
        await self.link_parent(room_id, space_id)
        if old_space_id and old_space_id != space_id:
            await self.outbox.state(room_id, PARENT, {}, old_space_id)

    async def unlink_child(self, space_id: str, room_id: str) -> None:
        await self.outbox.state(space_id, CHILD, {}, room_id)

    async def unlink_parent(self, room_id: str, space_id: str) -> None:
        await self.outbox.state(room_id, PARENT, {}, space_id)


def matrix_to(room_id: str, server_name: str) -> str:
    """A link to a room that any Matrix client opens."""
    return f"https://matrix.to/#/{room_id}?via={server_name}"
