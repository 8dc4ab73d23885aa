"""One call to an agent backend: under the global concurrency limit, with typing shown, the
dispatch timeout applied to the agent's time alone, and the answer's size bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing

import aiohttp

from ..agents import backend_for
from ..agents.base import (
    AgentRequest,
    BackendBadResponse,
    BackendDisconnected,
    BackendTimeout,
    Usage,
)
from ..agents.files import OutFile
from ..ops.metrics import Metrics
from ..ops.settings import AgentSettings, Settings
from .controls import CallControl
from .stream import ReplyStream
from .typing import TypingNotices


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
            # All: a limit raised meanwhile may let more than one waiter in.
            self._changed.notify_all()


# The most files one answer may carry.
MAX_ANSWER_FILES = 4


def cut_note(limit: int) -> str:
    return f"\n\n(The answer was cut here: it was longer than {limit} characters.)"


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
        stream: ReplyStream | None,
        control: CallControl | None = None,
        files: list[OutFile] | None = None,
    ) -> str:
        """Runs one agent call and returns the whole text; the files the agent answers with go
        to `files` (left out without it). Raises BackendError for the agent's failures; a Matrix
        error of the stream comes through as it is. With a `control`, a stop request ends the
        call early (its text so far is the answer), and the usage the server reported is kept
        there."""
        parts: list[str] = []
        limit = settings.answer_chars
        control = control or CallControl()
        received: list[OutFile] = [] if files is None else files

        def take(delta: str) -> None:
            parts.append(delta)
            if stream is not None:
                stream.add(delta)

        async def consume() -> bool:
            size = 0
            try:
                async with aclosing(backend_for(agent, self.http).reply(request)) as deltas:
                    async for delta in deltas:
                        if isinstance(delta, Usage):
                            control.usage = delta
                            continue
                        if isinstance(delta, OutFile):
                            if len(received) >= MAX_ANSWER_FILES:
                                raise BackendBadResponse(f"more than {MAX_ANSWER_FILES} files")
                            received.append(delta)
                            continue
                        if size + len(delta) > limit:
                            take(delta[: limit - size])
                            return True
                        size += len(delta)
                        take(delta)
            except aiohttp.ClientError as e:
                # Raised while the answer is read, e.g. when the agent's server disconnects.
                raise BackendDisconnected() from e
            return False

        async with self._limiter, self.typing.shown(request.room_id):
            started = time.monotonic()
            try:
                cut = await asyncio.wait_for(_unless_stopped(consume(), control), settings.timeout)
            except asyncio.TimeoutError as e:
                raise BackendTimeout(settings.timeout) from e
        if not "".join(parts).strip() and not received and not control.stopped:
            raise BackendBadResponse("the reply was empty")
        if cut:
            take(cut_note(limit))
        self.metrics.reply(agent.id, time.monotonic() - started)
        return "".join(parts)


async def _unless_stopped(consume: Awaitable[bool], control: CallControl) -> bool:
    """Runs the call until it ends or a stop is requested; a stop cancels it, which closes the
    connection to the agent's server."""
    call = asyncio.ensure_future(consume)
    stop = asyncio.ensure_future(control.requested.wait())
    try:
        await asyncio.wait({call, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (call, stop):
            if not task.done():
                task.cancel()
        await asyncio.gather(call, stop, return_exceptions=True)
    if call.cancelled():
        control.stopped = True
        return False
    return call.result()
