"""Onboarding: a user's Space, their invite to it, and the working rooms they start with.

Safe to repeat: each run only adds what is missing. Matrix errors are collected as problems and
told to the user, who can run it again to finish.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import Logger

from attrs import define, field
from maubot.matrix import MaubotMatrixClient
from mautrix.errors import MatrixError, MForbidden, MNotFound
from mautrix.types import EventType, Membership, RoomCreatePreset

from ..db import Store
from ..db.rows import RoomRow
from ..errors import UsageError
from ..matrix.binding import SpaceRecord
from ..matrix.power import space_power_levels
from ..matrix.record import MatrixRecord
from ..ops.locks import KeyedLocks
from ..ops.settings import Settings
from .rooms import WorkingRooms


def _error_text(e: BaseException) -> str:
    return str(e) or type(e).__name__


@define
class OnboardResult:
    space_id: str | None = None
    created_space: bool = False
    replaced_space: bool = False
    invited_again: bool = False
    relinked: int = 0
    new_rooms: list[RoomRow] = field(factory=list)
    problems: list[str] = field(factory=list)


@define(eq=False)
class Onboarding:
    """One per plugin instance: the per-user locks belong to it."""

    client: MaubotMatrixClient
    store: Store
    record: MatrixRecord
    rooms: WorkingRooms
    settings: Callable[[], Settings]
    log: Logger
    # One onboarding at a time per user, so that two `!ai start` at once give one Space.
    _locks: KeyedLocks = field(init=False, factory=KeyedLocks)

    async def onboard(self, user_id: str) -> OnboardResult:
        """Makes sure the user has a Space, is invited to it, and has the onboarding rooms."""
        result = OnboardResult()
        async with self._locks.hold(user_id):
            try:
                result.space_id = await self._ensure_space(user_id, result)
            except MatrixError as e:
                self.log.warning(f"Could not set up the Space of {user_id}: {e}")
                result.problems.append(f"setting up your Space failed ({_error_text(e)})")
                return result
            await self._ensure_rooms(user_id, result.space_id, result)
        return result

    async def start_message(self, user_id: str) -> str:
        """Onboards the user and returns the reply that tells them what happened."""
        return self.describe(await self.onboard(user_id))

    def describe(self, result: OnboardResult) -> str:
        prefix = self.settings().command_prefix
        lines: list[str] = []
        if result.space_id is not None:
            lines += self._describe_space(result)
        if result.problems:
            lines.append(
                "Setting up did not finish: " + "; ".join(result.problems) + ". Nothing is lost: "
                f"send `!{prefix} start` again to finish."
            )
        elif result.space_id is not None:
            lines.append(f"Send `!{prefix} help` in any of your rooms for the commands.")
        return "\n\n".join(lines)

    def _describe_space(self, result: OnboardResult) -> list[str]:
        assert result.space_id is not None
        link = self.rooms.link(result.space_id)
        if result.created_space and result.replaced_space:
            lines = [f"Your old Space was gone, so I made a new one: {link}"]
        elif result.created_space:
            lines = [f"Your Space is ready: {link}"]
        else:
            lines = [f"Your Space: {link}"]
        if result.invited_again:
            lines.append("I invited you to it again.")
        if result.relinked:
            lines.append(f"I moved {result.relinked} working room(s) into it.")
        if result.new_rooms:
            names = ", ".join(
                f"[{r.title}]({self.rooms.link(r.room_id)})" for r in result.new_rooms
            )
            if result.created_space:
                lines.append(f"I invited you to it and to your working rooms: {names}.")
            else:
                lines.append(f"I added the missing working room(s): {names}.")
        elif result.created_space:
            lines.append("I invited you to it.")
        return lines

    async def ensure_space(self, user_id: str) -> str:
        """The user's Space, made (without onboarding rooms) if they have none yet."""
        async with self._locks.hold(user_id):
            return await self._ensure_space(user_id, OnboardResult())

    async def new_room(
        self,
        owner: str,
        agent_id: str,
        title: str | None = None,
        fork: tuple[str, str] | None = None,
    ) -> RoomRow:
        limit = self.settings().rooms_per_user
        count = await self.store.rooms.count_of_owner(owner)
        if count >= limit:
            prefix = self.settings().command_prefix
            raise UsageError(
                f"You have {count} working rooms, and one user may have {limit} here. Archive "
                f"one with `!{prefix} archive` in it, then open a new one."
            )
        space_id = await self.ensure_space(owner)
        return await self.rooms.create(owner, space_id, agent_id, title, fork)

    async def _ensure_space(self, user_id: str, result: OnboardResult) -> str:
        user = await self.store.users.get(user_id)
        if user is not None and user.space_id is not None:
            if await self._membership(user.space_id, self.client.mxid) == Membership.JOIN:
                result.invited_again = await self._ensure_member(user.space_id, user_id)
                await self._relink_rooms(user_id, user.space_id, result)
                return user.space_id
            # The bot left or was removed: the Space cannot be managed any more.
            self.log.info(f"Space {user.space_id} of {user_id} is gone, making a new one")
            result.replaced_space = True
        space_id = await self._create_space(user_id)
        result.created_space = True
        await self._relink_rooms(user_id, space_id, result)
        return space_id

    async def _create_space(self, owner: str) -> str:
        settings = self.settings()
        name = settings.space_name.format(displayname=await self._displayname(owner), user_id=owner)
        space_id = await self.rooms.creator.create(
            space_power_levels(owner),
            preset=RoomCreatePreset.PRIVATE,
            name=name,
            creation_content={"type": "m.space"},
        )
        try:
            await self.record.write_space(space_id, SpaceRecord(owner))
        except MatrixError:
            # Without its record the Space is not the bot's: drop it, the next start retries.
            await self.rooms.abandon(space_id)
            raise
        await self.store.users.upsert(owner, space_id)
        # Invited last: a failed invite is repeated by the next start (see _ensure_member).
        await self.client.invite_user(space_id, owner)
        self.log.info(f"Created Space {space_id} for {owner}")
        return space_id

    async def _ensure_rooms(self, owner: str, space_id: str, result: OnboardResult) -> None:
        settings = self.settings()
        rooms = [r for r in await self.store.rooms.of_owner(owner) if r.space_id == space_id]
        present = {r.agent_id for r in rooms}
        for agent_id in settings.onboarding_rooms:
            if agent_id in present or agent_id not in settings.agents:
                continue
            try:
                result.new_rooms.append(await self.rooms.create(owner, space_id, agent_id))
            except MatrixError as e:
                name = settings.agents[agent_id].name
                self.log.warning(f"Could not create the {agent_id} room of {owner}: {e}")
                result.problems.append(f"creating the room for {name} failed ({_error_text(e)})")
                return
            present.add(agent_id)

    async def _relink_rooms(self, owner: str, space_id: str, result: OnboardResult) -> None:
        """Moves working rooms that point at an older Space (the bot lost it) into this one."""
        for room in await self.store.rooms.of_owner(owner):
            if room.space_id == space_id:
                continue
            try:
                await self.rooms.move(room, space_id)
            except MatrixError as e:
                self.log.warning(f"Could not move {room.room_id} into {space_id}: {e}")
                result.problems.append(f"moving the room {room.title} failed ({_error_text(e)})")
                continue
            result.relinked += 1

    async def _displayname(self, user_id: str) -> str:
        try:
            name = await self.client.get_displayname(user_id)
        except MatrixError:
            name = None
        return name or user_id[1:].split(":", 1)[0]

    async def _membership(self, room_id: str, user_id: str) -> Membership | None:
        try:
            member = await self.client.get_state_event(room_id, EventType.ROOM_MEMBER, user_id)
        except (MNotFound, MForbidden):
            return None
        return member.membership

    async def _ensure_member(self, room_id: str, user_id: str) -> bool:
        """Invites the user unless they are in the room or invited. True if it invited."""
        if await self._membership(room_id, user_id) in (Membership.JOIN, Membership.INVITE):
            return False
        await self.client.invite_user(room_id, user_id)
        return True
