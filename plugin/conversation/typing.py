"""The typing notice shown while an agent works on an answer that takes a while.

A quick answer needs none: the notice would cost the homeserver two requests and show nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from logging import Logger

from attrs import define
from maubot.matrix import MaubotMatrixClient
from mautrix.errors import MatrixError

# Shown only once an answer takes longer than this.
TYPING_DELAY = 1.0
TYPING_TIMEOUT_MS = 30_000
TYPING_REFRESH = 20.0


@define(eq=False)
class TypingNotices:
    client: MaubotMatrixClient
    log: Logger

    @asynccontextmanager
    async def shown(self, room_id: str) -> AsyncIterator[None]:
        shown = asyncio.Event()
        task = asyncio.create_task(self._keep(room_id, shown))
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if shown.is_set():
                await self._set(room_id, 0)

    async def _keep(self, room_id: str, shown: asyncio.Event) -> None:
        await asyncio.sleep(TYPING_DELAY)
        while True:
            shown.set()
            await self._set(room_id, TYPING_TIMEOUT_MS)
            await asyncio.sleep(TYPING_REFRESH)

    async def _set(self, room_id: str, timeout_ms: int) -> None:
        try:
            await self.client.set_typing(room_id, timeout_ms)
        except MatrixError as e:
            self.log.debug(f"Typing notification failed in {room_id}: {e}")
