"""One call to an agent backend: under the global concurrency limit, with typing shown and the
dispatch timeout applied."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp

from ..agents import backend_for
from ..agents.base import AgentRequest, BackendBadResponse, BackendDisconnected, BackendTimeout
from ..ops.metrics import Metrics
from ..ops.settings import AgentSettings, Settings
from .typing import TypingNotices

OnDelta = Callable[[str], Awaitable[None]]


class Limiter:
    """A semaphore whose size is read from the live settings, so a config change applies."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self._active = 0
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._active < self._limit())
            self._active += 1

    async def __aexit__(self, *_: object) -> None:
        async with self._changed:
            self._active -= 1
            self._changed.notify()


class AgentCaller:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        typing: TypingNotices,
        metrics: Metrics,
        settings: Callable[[], Settings],
    ) -> None:
        self.http = http
        self.typing = typing
        self.metrics = metrics
        self._limiter = Limiter(lambda: settings().max_concurrency)

    async def call(
        self,
        agent: AgentSettings,
        request: AgentRequest,
        settings: Settings,
        on_delta: OnDelta | None,
    ) -> str:
        """Runs one agent call and returns the whole text; raises BackendError."""
        parts: list[str] = []

        async def consume() -> None:
            try:
                async for delta in backend_for(agent, self.http).reply(request):
                    parts.append(delta)
                    if on_delta is not None:
                        await on_delta(delta)
            except aiohttp.ClientError as e:
                # Raised while the answer is read, e.g. when the agent's server disconnects.
                raise BackendDisconnected() from e

        async with self._limiter, self.typing.shown(request.room_id):
            started = time.monotonic()
            try:
                await asyncio.wait_for(consume(), settings.timeout)
            except asyncio.TimeoutError as e:
                raise BackendTimeout(settings.timeout) from e
        text = "".join(parts)
        if not text.strip():
            raise BackendBadResponse("the reply was empty")
        self.metrics.reply(agent.id, time.monotonic() - started)
        return text
