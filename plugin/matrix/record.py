"""Reads and writes the bot's own room account data: the record that the database caches."""

from __future__ import annotations

import time
from typing import Any

from maubot.matrix import MaubotMatrixClient
from mautrix.errors import MNotFound
from mautrix.types import EventType, Membership, PaginationDirection, StateEvent

from .binding import ANSWERED_TYPE, BINDING_TYPE, SPACE_TYPE, Binding, SpaceRecord

# Membership events searched back for the bot's invite; a room joined while the plugin was
# stopped is young, so its invite is near the end.
_INVITE_LOOKBACK = 100


class MatrixRecord:
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

    async def write_space(self, space_id: str, record: SpaceRecord) -> None:
        await self.client.set_account_data(SPACE_TYPE, record.to_content(), room_id=space_id)

    async def mark_answered(self, room_id: str, inviter: str) -> None:
        content = {"inviter": inviter, "answered_at": int(time.time() * 1000)}
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
