"""The typing notice shown while an agent works on an answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from logging import Logger

from maubot.matrix import MaubotMatrixClient
from mautrix.errors import MatrixRequestError

TYPING_TIMEOUT_MS = 30_000
TYPING_REFRESH = 20.0


class TypingNotices:
    def __init__(self, client: MaubotMatrixClient, log: Logger) -> None:
        self.client = client
        self.log = log

    @asynccontextmanager
    async def shown(self, room_id: str) -> AsyncIterator[None]:
        task = asyncio.create_task(self._keep(room_id))
        try:
            yield
        finally:
            task.cancel()
            await self._set(room_id, 0)

    async def _keep(self, room_id: str) -> None:
        while True:
            await self._set(room_id, TYPING_TIMEOUT_MS)
            await asyncio.sleep(TYPING_REFRESH)

    async def _set(self, room_id: str, timeout_ms: int) -> None:
        try:
            await self.client.set_typing(room_id, timeout_ms)
        except MatrixRequestError as e:
            self.log.debug(f"Typing notification failed in {room_id}: {e}")
