"""Onboarding and the lifecycle of working rooms: create, link, rename, switch agent, archive.

Every change goes to Matrix first and to the database after. A failure halfway leaves Matrix as
the truth, and the next `!ai start` (or the reconciliation) completes what is missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from logging import Logger
from typing import Any

from attrs import define, field
from maubot.matrix import MaubotMatrixClient
from mautrix.errors import MatrixError, MForbidden, MNotFound
from mautrix.types import EventType, Membership, MessageType, RoomCreatePreset

from .config import AgentSettings, Settings
from .db import ACTIVE, ARCHIVED, RoomRow, Store
from .matrix_state import Binding, MatrixRecord, SpaceRecord, new_chat_id

# Room version 12 gives the creator (the bot) unlimited power, so the bot is never listed.
ADMIN_LEVEL = 100
OWNER_LEVEL = 50
MEGOLM = "m.megolm.v1.aes-sha2"
MAX_TITLE = 200
# State the owner must never change: the Space structure, the power levels, the room's identity.
_PROTECTED_STATE = (
    "m.space.child",
    "m.space.parent",
    "m.room.power_levels",
    "m.room.tombstone",
    "m.room.encryption",
    "m.room.server_acl",
    "m.room.history_visibility",
    "m.room.join_rules",
    "m.room.guest_access",
    "m.room.canonical_alias",
)
_NAMING_STATE = ("m.room.name", "m.room.topic", "m.room.avatar")


class SpacesError(Exception):
    """A step that failed in Matrix; the message is for the user and says what to do."""


def matrix_to(room_id: str, server_name: str) -> str:
    return f"https://matrix.to/#/{room_id}?via={server_name}"


def _power_levels(owner: str, owner_state: tuple[str, ...]) -> dict[str, Any]:
    events = {name: ADMIN_LEVEL for name in _PROTECTED_STATE + _NAMING_STATE}
    events.update({name: OWNER_LEVEL for name in owner_state})
    return {
        "users": {owner: OWNER_LEVEL},
        "users_default": 0,
        "events_default": 0,
        "state_default": ADMIN_LEVEL,
        "invite": OWNER_LEVEL,
        "kick": ADMIN_LEVEL,
        "ban": ADMIN_LEVEL,
        "redact": ADMIN_LEVEL,
        "events": events,
    }


def space_power_levels(owner: str) -> dict[str, Any]:
    """The owner chats and invites; the Space's name, children and levels stay the bot's."""
    return _power_levels(owner, ())


def room_power_levels(owner: str) -> dict[str, Any]:
    """In a working room the owner may also rename it and set its topic and avatar."""
    return _power_levels(owner, _NAMING_STATE)


def find_agent(settings: Settings, word: str) -> AgentSettings | None:
    """An agent by id, or else by its display name; both case-insensitive."""
    word = word.strip().lower()
    for agent in settings.agents.values():
        if agent.id.lower() == word:
            return agent
    for agent in settings.agents.values():
        if agent.name.lower() == word:
            return agent
    return None


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


class Spaces:
    """One per plugin instance: the locks and the Matrix client belong to it."""

    def __init__(
        self,
        client: MaubotMatrixClient,
        store: Store,
        record: MatrixRecord,
        settings: Callable[[], Settings],
        log: Logger,
    ) -> None:
        self.client = client
        self.store = store
        self.record = record
        self.settings = settings
        self.log = log
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def server_name(self) -> str:
        return self.client.mxid.split(":", 1)[1]

    def link(self, room_id: str) -> str:
        return matrix_to(room_id, self.server_name)

    def lock(self, user_id: str) -> asyncio.Lock:
        # One onboarding at a time per user, so that two `!ai start` at once give one Space.
        return self._locks.setdefault(user_id, asyncio.Lock())

    # Onboarding

    async def onboard(self, user_id: str) -> OnboardResult:
        """Makes sure the user has a Space, is invited to it, and has the onboarding rooms.

        Safe to repeat: each run only adds what is missing. Matrix errors are collected in
        `problems` instead of raised, so the caller can tell the user what happened.
        """
        result = OnboardResult()
        async with self.lock(user_id):
            try:
                result.space_id = await self._ensure_space(user_id, result)
            except MatrixError as e:
                self.log.warning(f"Could not set up the Space of {user_id}: {e}")
                result.problems.append(f"creating your Space failed ({_error_text(e)})")
                return result
            await self._ensure_rooms(user_id, result.space_id, result)
        return result

    async def start_message(self, user_id: str) -> str:
        """Onboards the user and returns the reply that tells them what happened."""
        result = await self.onboard(user_id)
        return self.describe(result)

    def describe(self, result: OnboardResult) -> str:
        prefix = self.settings().command_prefix
        lines: list[str] = []
        if result.space_id is not None:
            link = self.link(result.space_id)
            if result.created_space and result.replaced_space:
                lines.append(f"Your old Space was gone, so I made a new one: {link}")
            elif result.created_space:
                lines.append(f"Your Space is ready: {link}")
            else:
                lines.append(f"Your Space: {link}")
            if result.invited_again:
                lines.append("I invited you to it again.")
            if result.relinked:
                lines.append(f"I moved {result.relinked} working room(s) into it.")
            if result.new_rooms:
                names = ", ".join(f"[{r.title}]({self.link(r.room_id)})" for r in result.new_rooms)
                if result.created_space:
                    lines.append(f"I invited you to it and to your working rooms: {names}.")
                else:
                    lines.append(f"I added the missing working room(s): {names}.")
            elif result.created_space:
                lines.append("I invited you to it.")
        if result.problems:
            lines.append(
                "Setting up did not finish: " + "; ".join(result.problems) + ". Nothing is lost: "
                f"send `!{prefix} start` again to finish."
            )
        elif result.space_id is not None:
            lines.append(f"Send `!{prefix} help` in any of your rooms for the commands.")
        return "\n\n".join(lines)

    async def _ensure_space(self, user_id: str, result: OnboardResult) -> str:
        user = await self.store.get_user(user_id)
        if user is not None and user.space_id is not None:
            if await self._bot_joined(user.space_id):
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
        space_id = await self.client.create_room(
            preset=RoomCreatePreset.PRIVATE,
            name=name,
            creation_content={"type": "m.space"},
            power_level_override=space_power_levels(owner),
        )
        try:
            await self.record.write_space(space_id, SpaceRecord(owner))
        except MatrixError:
            # Without its record the Space is not the bot's: drop it, the next start retries.
            await self._abandon(space_id)
            raise
        await self.store.upsert_user(owner, space_id)
        # Invited last: a failed invite is repeated by the next start (see _ensure_member).
        await self.client.invite_user(space_id, owner)
        self.log.info(f"Created Space {space_id} for {owner}")
        return space_id

    async def _ensure_rooms(self, owner: str, space_id: str, result: OnboardResult) -> None:
        settings = self.settings()
        rooms = [r for r in await self.store.rooms_of(owner) if r.space_id == space_id]
        present = {r.agent_id for r in rooms}
        for agent_id in settings.onboarding_rooms:
            if agent_id in present or agent_id not in settings.agents:
                continue
            try:
                result.new_rooms.append(await self.create_room(owner, space_id, agent_id))
            except MatrixError as e:
                name = settings.agents[agent_id].name
                self.log.warning(f"Could not create the {agent_id} room of {owner}: {e}")
                result.problems.append(f"creating the room for {name} failed ({_error_text(e)})")
                return
            present.add(agent_id)

    async def _relink_rooms(self, owner: str, space_id: str, result: OnboardResult) -> None:
        """Moves working rooms that point at an older Space (the bot lost it) into this one."""
        for room in await self.store.rooms_of(owner):
            if room.space_id == space_id:
                continue
            try:
                await self.link_room(space_id, room.room_id, old_space_id=room.space_id)
                moved = Binding.of_room(room)
                moved.space_id = space_id
                await self.record.write_binding(room.room_id, moved)
            except MatrixError as e:
                self.log.warning(f"Could not move {room.room_id} into {space_id}: {e}")
                result.problems.append(f"moving the room {room.title} failed ({_error_text(e)})")
                continue
            room.space_id = space_id
            await self.store.upsert_room(room)
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

    async def _bot_joined(self, room_id: str) -> bool:
        return await self._membership(room_id, self.client.mxid) == Membership.JOIN

    async def _ensure_member(self, room_id: str, user_id: str) -> bool:
        """Invites the user unless they are in the room or invited. True if it invited."""
        if await self._membership(room_id, user_id) in (Membership.JOIN, Membership.INVITE):
            return False
        await self.client.invite_user(room_id, user_id)
        return True

    async def _abandon(self, room_id: str) -> None:
        try:
            await self.client.leave_room(room_id)
            await self.client.forget_room(room_id)
        except MatrixError as e:
            self.log.warning(f"Could not leave the unfinished room {room_id}: {e}")

    # Working rooms

    async def ensure_space(self, user_id: str) -> str:
        """The user's Space, made (without onboarding rooms) if they have none yet."""
        async with self.lock(user_id):
            return await self._ensure_space(user_id, OnboardResult())

    async def create_room(
        self, owner: str, space_id: str, agent_id: str, title: str | None = None
    ) -> RoomRow:
        """A new working room in the Space, linked both ways, bound, and its owner invited."""
        settings = self.settings()
        title = title or settings.agents[agent_id].name
        initial_state: list[dict[str, Any]] = [
            {
                "type": str(EventType.SPACE_PARENT),
                "state_key": space_id,
                "content": {"via": [self.server_name], "canonical": True},
            }
        ]
        if self._encrypt(settings):
            initial_state.append(
                {
                    "type": str(EventType.ROOM_ENCRYPTION),
                    "state_key": "",
                    "content": {"algorithm": MEGOLM},
                }
            )
        room_id = await self.client.create_room(
            preset=RoomCreatePreset.PRIVATE,
            name=title,
            initial_state=initial_state,
            power_level_override=room_power_levels(owner),
        )
        binding = Binding(owner=owner, space_id=space_id, agent_id=agent_id, chat_id=new_chat_id())
        row = binding.room_row(room_id, title, space_id=space_id)
        try:
            await self.record.write_binding(room_id, binding)
            await self.link_room(space_id, room_id)
            # Invited last, so that a failure before leaves the owner no empty room to join.
            await self.client.invite_user(room_id, owner)
        except MatrixError:
            await self._unlink_quietly(space_id, room_id)
            await self._abandon(room_id)
            raise
        await self.store.upsert_room(row)
        self.log.info(f"Created working room {room_id} ({agent_id}) for {owner}")
        return row

    def _encrypt(self, settings: Settings) -> bool:
        if settings.encrypt == "always":
            return True
        if settings.encrypt == "never":
            return False
        return self.client.crypto is not None

    async def link_room(self, space_id: str, room_id: str, old_space_id: str | None = None) -> None:
        """Writes both links: the Space's child (sent by the bot) and the room's canonical parent.

        Reused by reconciliation to repair drift; writing a link that exists changes nothing.
        """
        via = {"via": [self.server_name]}
        await self.client.send_state_event(space_id, EventType.SPACE_CHILD, via, room_id)
        await self.client.send_state_event(
            room_id, EventType.SPACE_PARENT, {**via, "canonical": True}, space_id
        )
        if old_space_id and old_space_id != space_id:
            await self.client.send_state_event(room_id, EventType.SPACE_PARENT, {}, old_space_id)

    async def unlink_room(self, space_id: str, room_id: str) -> None:
        """Removes both links; empty content is how Matrix deletes a child or parent."""
        await self.client.send_state_event(space_id, EventType.SPACE_CHILD, {}, room_id)
        await self.client.send_state_event(room_id, EventType.SPACE_PARENT, {}, space_id)

    async def _unlink_quietly(self, space_id: str, room_id: str) -> None:
        try:
            await self.client.send_state_event(space_id, EventType.SPACE_CHILD, {}, room_id)
        except MatrixError as e:
            self.log.warning(f"Could not unlink {room_id} from {space_id}: {e}")

    async def new_room(self, owner: str, agent_id: str, title: str | None = None) -> RoomRow:
        space_id = await self.ensure_space(owner)
        return await self.create_room(owner, space_id, agent_id, title)

    async def set_agent(self, room: RoomRow, agent_id: str) -> None:
        binding = Binding.of_room(room)
        binding.agent_id = agent_id
        await self.record.write_binding(room.room_id, binding)
        await self.store.set_room_agent(room.room_id, agent_id)

    async def rename(self, room: RoomRow, title: str) -> None:
        await self.client.send_state_event(room.room_id, EventType.ROOM_NAME, {"name": title})
        await self.store.set_room_title(room.room_id, title)

    async def title_changed(self, room_id: str, title: str) -> None:
        """The owner renamed the room in their client: the cached title follows."""
        room = await self.store.get_room(room_id)
        if room is not None and room.state == ACTIVE and room.title != title:
            await self.store.set_room_title(room_id, title)

    async def archive(self, room: RoomRow, farewell: str | None = None) -> None:
        """Unlinks the room from the Space and leaves it. The owner keeps the history."""
        if room.space_id is not None:
            await self.unlink_room(room.space_id, room.room_id)
        if farewell:
            await self.client.send_markdown(room.room_id, farewell, msgtype=MessageType.NOTICE)
        try:
            await self.client.leave_room(room.room_id)
        except MatrixError as e:
            # Unlinked is what matters to the user; a room the bot stays in does no harm.
            self.log.warning(f"Could not leave the archived room {room.room_id}: {e}")
        await self.store.set_room_state(room.room_id, ARCHIVED)
        self.log.info(f"Archived working room {room.room_id} of {room.owner}")

    async def bot_left(self, room_id: str) -> None:
        """The bot is no longer in a working room (left or removed): it is not managed any more."""
        room = await self.store.get_room(room_id)
        if room is not None and room.state == ACTIVE:
            await self.store.set_room_state(room_id, ARCHIVED)
            self.log.info(f"Left working room {room_id}; marked it archived")
