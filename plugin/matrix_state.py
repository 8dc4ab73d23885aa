"""The bot's own record in Matrix: the source of truth that the database caches.

Each managed room carries the bot's private room account data (a "binding"); only the bot can
write it, so no user can forge it. Spaces carry a smaller record naming their owner.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from attrs import asdict, define
from maubot.matrix import MaubotMatrixClient
from mautrix.api import Method, Path
from mautrix.errors import MNotFound
from mautrix.types import EventType, Membership, PaginationDirection, StateEvent

from .db import ACTIVE, RoomRow, now_ms

BINDING_TYPE = "org.agentspaces.room"
SPACE_TYPE = "org.agentspaces.space"
# Set once the bot has answered its invite into a room. maubot's autojoin joins invites even
# while the plugin is stopped; a joined room without this mark is an invite nobody answered yet.
ANSWERED_TYPE = "org.agentspaces.answered"
SCHEMA_VERSION = 1
# Marks a reply that is still being streamed; the last edit drops it.
STREAMING_KEY = "org.agentspaces.streaming"
# Membership events searched back for the bot's invite; a room joined while the plugin was
# stopped is young, so its invite is near the end.
_INVITE_LOOKBACK = 100
# Fixed namespace so that a room without a chat id always gets the same one back.
_CHAT_ID_NAMESPACE = uuid.UUID("5b0e6a8e-58a4-4f4e-9d3c-0d5f6b1f7a21")


def new_chat_id() -> str:
    return str(uuid.uuid4())


def deterministic_chat_id(room_id: str) -> str:
    """The chat id of a room that has none (older data): the same room always gets the same id."""
    return str(uuid.uuid5(_CHAT_ID_NAMESPACE, room_id))


@define
class Binding:
    """What binds a working room to its owner, Space, agent and platform chat."""

    owner: str
    space_id: str | None
    agent_id: str
    chat_id: str | None
    context_start: str | None = None
    share_memory: bool = True
    version: int = SCHEMA_VERSION

    def to_content(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of_room(cls, room: RoomRow) -> Binding:
        """The binding a room's DB row mirrors."""
        return cls(
            owner=room.owner,
            space_id=room.space_id,
            agent_id=room.agent_id,
            chat_id=room.chat_id,
            context_start=room.context_start,
            share_memory=room.share_memory,
        )

    def room_row(
        self,
        room_id: str,
        title: str,
        *,
        space_id: str | None = None,
        state: str = ACTIVE,
        moved_to: str | None = None,
        created_at: int | None = None,
    ) -> RoomRow:
        """The DB row of a room with this binding. The catch-up cursor starts empty."""
        return RoomRow(
            room_id=room_id,
            owner=self.owner,
            space_id=space_id,
            agent_id=self.agent_id,
            chat_id=self.chat_id,
            title=title,
            context_start=self.context_start,
            share_memory=self.share_memory,
            state=state,
            moved_to=moved_to,
            last_event_id=None,
            last_event_ts=0,
            created_at=now_ms() if created_at is None else created_at,
        )

    @classmethod
    def from_content(cls, content: dict[str, Any] | None) -> Binding | None:
        """None when the content is not a binding this version of the bot understands."""
        if not isinstance(content, dict):
            return None
        owner, agent_id = content.get("owner"), content.get("agent_id")
        if not isinstance(owner, str) or not isinstance(agent_id, str):
            return None
        chat_id = content.get("chat_id")
        space_id = content.get("space_id")
        context_start = content.get("context_start")
        return cls(
            owner=owner,
            space_id=space_id if isinstance(space_id, str) else None,
            agent_id=agent_id,
            chat_id=chat_id if isinstance(chat_id, str) and chat_id else None,
            context_start=context_start if isinstance(context_start, str) else None,
            share_memory=content.get("share_memory") is not False,
            version=int(content.get("version") or SCHEMA_VERSION),
        )


@define
class SpaceRecord:
    owner: str
    version: int = SCHEMA_VERSION

    def to_content(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_content(cls, content: dict[str, Any] | None) -> SpaceRecord | None:
        if not isinstance(content, dict) or not isinstance(content.get("owner"), str):
            return None
        return cls(owner=content["owner"], version=int(content.get("version") or SCHEMA_VERSION))


class MatrixRecord:
    """Reads and writes the bot's room account data."""

    def __init__(self, client: MaubotMatrixClient) -> None:
        self.client = client

    async def _read(self, room_id: str, type: str) -> dict[str, Any] | None:
        try:
            return await self.client.get_account_data(type, room_id=room_id)
        except MNotFound:
            return None

    async def read_binding(self, room_id: str) -> Binding | None:
        return Binding.from_content(await self._read(room_id, BINDING_TYPE))

    async def write_binding(self, room_id: str, binding: Binding) -> None:
        await self.client.set_account_data(BINDING_TYPE, binding.to_content(), room_id=room_id)

    async def read_space(self, space_id: str) -> SpaceRecord | None:
        return SpaceRecord.from_content(await self._read(space_id, SPACE_TYPE))

    async def write_space(self, space_id: str, record: SpaceRecord) -> None:
        await self.client.set_account_data(SPACE_TYPE, record.to_content(), room_id=space_id)

    async def mark_answered(self, room_id: str, inviter: str) -> None:
        content = {"inviter": inviter, "answered_at": now_ms()}
        await self.client.set_account_data(ANSWERED_TYPE, content, room_id=room_id)

    async def find_invite(self, room_id: str) -> StateEvent | None:
        """The bot's latest invite into a room it has joined, from the room's history."""
        page = await self.client.get_messages(
            room_id,
            PaginationDirection.BACKWARD,
            limit=_INVITE_LOOKBACK,
            filter_json={"types": [str(EventType.ROOM_MEMBER)]},
        )
        for evt in page.events:
            if (
                isinstance(evt, StateEvent)
                and evt.state_key == self.client.mxid
                and evt.content.membership == Membership.INVITE
            ):
                return evt
        return None


async def link_child(client: MaubotMatrixClient, space_id: str, room_id: str, via: str) -> None:
    """The Space's side of the link. Only the bot may send it (power levels)."""
    await client.send_state_event(
        space_id, EventType.SPACE_CHILD, {"via": [via]}, state_key=room_id
    )


async def link_parent(client: MaubotMatrixClient, room_id: str, space_id: str, via: str) -> None:
    """The room's side of the link, marked canonical: a working room has exactly one Space."""
    await client.send_state_event(
        room_id, EventType.SPACE_PARENT, {"via": [via], "canonical": True}, state_key=space_id
    )


async def fresh_initial_sync(
    client: MaubotMatrixClient, sync_filter: dict[str, Any], full_state: bool
) -> dict[str, Any]:
    """One /sync without a since token, answered from the server's current state.

    Synapse caches /sync answers by their parameters (two minutes by default), so the same
    request made again after a restart would get the old answer. The timeout is part of that
    cache key and means nothing to a sync without a since token, so it is varied.
    """
    return await client.api.request(
        Method.GET,
        Path.v3.sync,
        query_params={
            "filter": json.dumps(sync_filter),
            "full_state": "true" if full_state else "false",
            "timeout": str(time.time_ns() // 1_000_000 % 2**31),
        },
    )
