"""Reacting to m.room.member events: invites to the bot, and owners leaving.

- An invite from a non-allowed user is declined, and nothing is created.
- An allowed user's direct-chat invite onboards them (`onboarding.on_invite`).
- An invite into an encrypted room, when the client cannot decrypt, gets one plain notice that
  points to the user's Space.
- An answered invite is marked in Matrix, so that a start can tell which rooms maubot's autojoin
  joined while the plugin was stopped (see `startup.reconcile`).
- The owner leaving a working room archives it; the owner leaving the Space deletes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import Logger

from attrs import define, field
from maubot.matrix import MaubotMatrixClient
from mautrix.client.syncer import SyncStream
from mautrix.errors import MatrixError
from mautrix.types import EventType, Membership, StateEvent

from ..db import Store
from ..db.rows import ACTIVE
from ..matrix.outbox import Outbox
from ..matrix.record import MatrixRecord
from ..ops import access
from ..ops.settings import Settings
from ..ops.throttle import Throttle
from .onboarding import Onboarding
from .rooms import WorkingRooms

_GONE = (Membership.LEAVE, Membership.BAN)
# A room is told at most this often that the bot cannot read encrypted messages.
ENCRYPTION_NOTICE_INTERVAL = 24 * 3600.0


def _from_invite(evt: StateEvent) -> bool:
    """The invite as the invite section of /sync delivers it. Once the bot joined, the same
    invite event comes again in the room's timeline: that one was answered already."""
    source = getattr(evt, "source", None)
    return source is None or bool(source & SyncStream.INVITED_ROOM)


@define(eq=False)
class MembershipHandler:
    client: MaubotMatrixClient
    store: Store
    outbox: Outbox
    onboarding: Onboarding
    rooms: WorkingRooms
    record: MatrixRecord
    settings: Callable[[], Settings]
    log: Logger
    # Rooms already told that the bot cannot read encryption, so the notice comes once.
    _encryption_noticed: Throttle = field(
        init=False, factory=lambda: Throttle(ENCRYPTION_NOTICE_INTERVAL)
    )

    async def on_member(self, evt: StateEvent) -> None:
        membership = evt.content.membership
        if evt.state_key == self.client.mxid:
            if membership == Membership.INVITE and _from_invite(evt):
                invite_state = getattr(evt.unsigned, "invite_room_state", None) or []
                encrypted = any(ev.type == EventType.ROOM_ENCRYPTION for ev in invite_state)
                is_direct = bool(evt.content.is_direct)
                await self.handle_invite(evt.room_id, evt.sender, is_direct, encrypted)
            elif membership in _GONE:
                await self.rooms.bot_left(evt.room_id)
            return
        if membership in _GONE:
            await self.member_left(evt.room_id, evt.state_key)

    async def handle_invite(
        self, room_id: str, inviter: str, is_direct: bool, encrypted: bool
    ) -> None:
        """Accepts or declines the bot's invite. Also used for invites that came while down."""
        settings = self.settings()
        if not access.is_allowed(settings, inviter):
            self.log.info(f"Declining the invite of {inviter} to {room_id}: not allowed")
            await self._reject(room_id)
            return
        try:
            # maubot's autojoin may have joined already; joining again changes nothing. One try:
            # mautrix retries a failed join for over a minute, and an invite into a room that
            # everyone left fails for good, which would hold up a start's reconciliation.
            await self.client.join_room(room_id, max_retries=0)
        except MatrixError as e:
            self.log.warning(f"Could not join {room_id} after the invite of {inviter}: {e}")
            await self._reject(room_id)
            return
        if await self._greet(room_id, inviter, is_direct, encrypted):
            try:
                await self.record.mark_answered(room_id, inviter)
            except MatrixError as e:
                self.log.warning(f"Could not mark the invite to {room_id} as answered: {e}")

    async def _reject(self, room_id: str) -> None:
        """Declines an invite that cannot be taken, so that no start tries it again."""
        try:
            await self.client.leave_room(room_id)
        except MatrixError as e:
            self.log.warning(f"Could not decline the invite to {room_id}: {e}")

    async def _greet(self, room_id: str, inviter: str, is_direct: bool, encrypted: bool) -> bool:
        """Sends what a joined invite calls for. False when that failed: the next start retries."""
        settings = self.settings()
        cannot_read = encrypted and self.client.crypto is None
        if cannot_read and not self._encryption_noticed.allow(room_id):
            return True
        onboard = settings.on_invite and (is_direct or cannot_read)
        if not onboard and not cannot_read:
            return True
        parts: list[str] = []
        if cannot_read:
            parts.append(
                "I can't read encrypted messages, so I can't answer in this room. "
                "Talk to the agents in the rooms of your Space instead."
            )
        if onboard:
            parts.append(await self.onboarding.start_message(inviter))
        else:
            parts.append(await self._space_hint(inviter))
        try:
            # Without crypto the outbox sends plain text, readable in a room it cannot encrypt for.
            await self.outbox.notice(room_id, "\n\n".join(parts))
        except MatrixError as e:
            self.log.warning(f"Could not greet {inviter} in {room_id}: {e}")
            return False
        return True

    async def _space_hint(self, user_id: str) -> str:
        prefix = self.settings().command_prefix
        user = await self.store.users.get(user_id)
        if user is not None and user.space_id is not None:
            return f"Your Space: {self.rooms.link(user.space_id)}"
        return f"Send `!{prefix} start` in an unencrypted room with me to get your Space."

    async def member_left(self, room_id: str, user_id: str) -> None:
        room = await self.store.rooms.get(room_id)
        if room is not None and room.state == ACTIVE and room.owner == user_id:
            try:
                await self.rooms.archive(room)
            except MatrixError as e:
                self.log.warning(f"Could not archive {room_id} after its owner left: {e}")
            return
        user = await self.store.users.by_space(room_id)
        if user is not None and user.user_id == user_id:
            # Deliberately nothing: the rooms live on, and `!ai start` invites the owner again.
            self.log.info(f"{user_id} left their Space {room_id}; keeping it")
