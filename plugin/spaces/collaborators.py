"""Shared rooms: the owner adds and removes collaborators, who are recorded in the binding (so
a rebuild from Matrix brings them back) and invited to, or removed from, the room.

Only allowed users can be collaborators. A collaborator talks to the room's agent; their own
memory never enters the room, and the owner's memory never enters their requests (see
`conversation.context`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from logging import Logger

from attrs import define
from maubot.matrix import MaubotMatrixClient
from mautrix.errors import MatrixError, MNotFound
from mautrix.types import EventType, Membership

from ..db.rows import RoomRow
from ..errors import UsageError
from ..ops import access
from ..ops.settings import Settings
from .bindings import Bindings

# Collaborators one room may have: the binding lives in one account data event.
MAX_COLLABORATORS = 50
# In the room or invited to it: an invite would change nothing.
_PRESENT = (Membership.JOIN, Membership.INVITE)
_USER_ID = re.compile(r"^@[^:\s]+:[^\s]+$")


@define(eq=False)
class Collaborators:
    client: MaubotMatrixClient
    bindings: Bindings
    settings: Callable[[], Settings]
    log: Logger

    def _checked(self, room: RoomRow, user_id: str, verb: str) -> str:
        prefix = self.settings().command_prefix
        user_id = user_id.strip()
        if not _USER_ID.match(user_id):
            raise UsageError(
                f"Say whom to {verb} by their Matrix ID: `!{prefix} {verb} @bob:example.org`."
            )
        if user_id in (room.owner, self.client.mxid):
            raise UsageError(f"{user_id} is not someone you can {verb} here.")
        return user_id

    async def invite(self, room: RoomRow, user_id: str) -> str:
        user_id = self._checked(room, user_id, "invite")
        if not access.is_allowed(self.settings(), user_id):
            raise UsageError(
                f"{user_id} may not use this bot, so they cannot be a collaborator. An admin "
                "can allow them in `access.allowed`."
            )
        if user_id not in room.collaborators:
            if len(room.collaborators) >= MAX_COLLABORATORS:
                raise UsageError(
                    f"This room has {MAX_COLLABORATORS} collaborators, the most it may have."
                )
            collaborators = tuple(sorted({*room.collaborators, user_id}))
            room = await self.bindings.change(room, collaborators=collaborators)
        # Invited after the binding: a failed invite (the router tells it) is repeated by the
        # same command.
        if await self._membership(room.room_id, user_id) not in _PRESENT:
            await self.client.invite_user(room.room_id, user_id)
        if self.settings().group_trigger == "all":
            how = "I answer every message in it"
        else:
            how = "I answer when I am mentioned or replied to"
        return f"{user_id} is a collaborator here now. This room is shared: {how}."

    async def _membership(self, room_id: str, user_id: str) -> Membership | None:
        try:
            member = await self.client.get_state_event(room_id, EventType.ROOM_MEMBER, user_id)
        except MNotFound:
            return None
        return member.membership

    async def remove(self, room: RoomRow, user_id: str) -> str:
        user_id = self._checked(room, user_id, "remove")
        if user_id not in room.collaborators:
            raise UsageError(f"{user_id} is not a collaborator of this room.")
        collaborators = tuple(c for c in room.collaborators if c != user_id)
        await self.bindings.change(room, collaborators=collaborators)
        try:
            await self.client.kick_user(room.room_id, user_id, "removed by the room's owner")
        except MatrixError as e:
            # They left already: what matters is that the binding no longer lists them.
            self.log.info(f"Removing {user_id} from {room.room_id}: {e}")
        return f"{user_id} is no longer a collaborator here."
