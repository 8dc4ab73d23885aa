"""The lifecycle of working rooms: create, switch agent, rename, archive.

Every change goes to Matrix first and to the database after. A failure halfway leaves Matrix as
the truth, and the next `!ai start` (or the reconciliation) completes what is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import Logger
from typing import Any

from attrs import define
from maubot.matrix import MaubotMatrixClient
from mautrix.errors import MatrixError, MForbidden
from mautrix.types import EventType, RoomCreatePreset

from ..db import Store
from ..db.rows import ACTIVE, ARCHIVED, RoomRow
from ..matrix.binding import Binding, new_chat_id
from ..matrix.creation import RoomCreator
from ..matrix.identity import AgentIdentity
from ..matrix.links import SpaceLinks, matrix_to, parent_content
from ..matrix.outbox import Outbox
from ..matrix.power import room_power_levels
from ..ops.settings import Settings
from .bindings import Bindings

MEGOLM = "m.megolm.v1.aes-sha2"
MAX_TITLE = 200


@define(eq=False)
class WorkingRooms:
    client: MaubotMatrixClient
    store: Store
    outbox: Outbox
    links: SpaceLinks
    bindings: Bindings
    creator: RoomCreator
    identity: AgentIdentity
    settings: Callable[[], Settings]
    log: Logger

    @property
    def server_name(self) -> str:
        return self.client.mxid.split(":", 1)[1]

    def link(self, room_id: str) -> str:
        return matrix_to(room_id, self.server_name)

    async def create(
        self,
        owner: str,
        space_id: str,
        agent_id: str,
        title: str | None = None,
        fork: tuple[str, str] | None = None,
    ) -> RoomRow:
        """A new working room in the Space, linked both ways, bound, with the agent's identity,
        and its owner invited. A fork's binding records the room and event it came from."""
        settings = self.settings()
        title = title or settings.agents[agent_id].name
        initial_state: list[dict[str, Any]] = [
            {
                "type": str(EventType.SPACE_PARENT),
                "state_key": space_id,
                "content": parent_content(self.server_name),
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
        room_id = await self.creator.create(
            room_power_levels(owner),
            preset=RoomCreatePreset.PRIVATE,
            name=title,
            initial_state=initial_state,
        )
        fork_room, fork_event = fork or (None, None)
        binding = Binding(
            owner=owner,
            space_id=space_id,
            agent_id=agent_id,
            chat_id=new_chat_id(),
            fork_room=fork_room,
            fork_event=fork_event,
        )
        row = RoomRow.new(room_id, binding, title)

        async def link_and_invite() -> None:
            await self.links.link(space_id, room_id)
            await self.show_agent(room_id, agent_id)
            # Invited last, so that a failure before leaves the owner no empty room to join.
            await self.client.invite_user(room_id, owner)

        try:
            await self.bindings.create(row, then_in_matrix=link_and_invite)
        except MatrixError:
            await self._unlink_quietly(space_id, room_id)
            await self.abandon(room_id)
            raise
        self.log.info(f"Created working room {room_id} ({agent_id}) for {owner}")
        return row

    def _encrypt(self, settings: Settings) -> bool:
        if settings.encrypt == "always":
            return True
        if settings.encrypt == "never":
            return False
        return self.client.crypto is not None

    async def set_agent(self, room: RoomRow, agent_id: str) -> None:
        await self.bindings.change(room, agent_id=agent_id)
        await self.show_agent(room.room_id, agent_id)

    async def show_agent(self, room_id: str, agent_id: str) -> None:
        """The bot appears as the agent in the room. A failure leaves the bot's usual profile
        there, which is no reason to fail what the user asked for."""
        agent = self.settings().agents.get(agent_id)
        if agent is None:
            return
        try:
            await self.identity.apply(room_id, agent)
        except MatrixError as e:
            self.log.warning(f"Could not show agent {agent_id} as the bot in {room_id}: {e}")

    async def move(self, room: RoomRow, space_id: str) -> None:
        """Moves a room into another Space of its owner: links, then the binding."""
        await self.links.link(space_id, room.room_id, old_space_id=room.space_id)
        await self.bindings.change(room, space_id=space_id)

    async def rename(self, room: RoomRow, title: str) -> None:
        await self.outbox.state(room.room_id, str(EventType.ROOM_NAME), {"name": title})
        await self.store.rooms.set_title(room.room_id, title)

    async def title_changed(self, room_id: str, title: str) -> None:
        """The owner renamed the room in their client: the cached title follows."""
        room = await self.store.rooms.get(room_id)
        if room is not None and room.state == ACTIVE and room.title != title:
            await self.store.rooms.set_title(room_id, title)

    async def archive(self, room: RoomRow, farewell: str | None = None) -> None:
        """Unlinks the room from the Space and leaves it. The owner keeps the history."""
        if room.space_id is not None:
            try:
                await self.links.unlink_child(room.space_id, room.room_id)
            except MForbidden as e:
                # The bot is no longer in that Space (the owner got a new one): the room's side
                # of the link is all that is left to remove.
                self.log.info(f"Could not unlink {room.room_id} from {room.space_id}: {e}")
            await self.links.unlink_parent(room.room_id, room.space_id)
        if farewell:
            await self.outbox.notice(room.room_id, farewell)
        try:
            await self.client.leave_room(room.room_id)
        except MatrixError as e:
            # Unlinked is what matters to the user; a room the bot stays in does no harm.
            self.log.warning(f"Could not leave the archived room {room.room_id}: {e}")
        await self.store.rooms.set_state(room.room_id, ARCHIVED)
        self.log.info(f"Archived working room {room.room_id} of {room.owner}")

    async def bot_left(self, room_id: str) -> None:
        """The bot is no longer in a working room (left or removed): it is not managed any more."""
        room = await self.store.rooms.get(room_id)
        if room is not None and room.state == ACTIVE:
            await self.store.rooms.set_state(room_id, ARCHIVED)
            self.log.info(f"Left working room {room_id}; marked it archived")

    async def abandon(self, room_id: str) -> None:
        """Leaves and forgets a room whose creation did not finish."""
        try:
            await self.client.leave_room(room_id)
            await self.client.forget_room(room_id)
        except MatrixError as e:
            self.log.warning(f"Could not leave the unfinished room {room_id}: {e}")

    async def _unlink_quietly(self, space_id: str, room_id: str) -> None:
        try:
            await self.links.unlink_child(space_id, room_id)
        except MatrixError as e:
            self.log.warning(f"Could not unlink {room_id} from {space_id}: {e}")
