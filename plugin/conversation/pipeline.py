"""Each room's answers, shown in order while the next message's agent already works.

Once an agent has answered, showing the answer (its last edit in Matrix) and writing it down take
the homeserver's and the database's time. The room's next message need not wait for them: its
agent is called at once, with the answer still in flight in its context. What the room sees
keeps its order: each answer is shown, and written, after the one before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from contextlib import suppress
from logging import Logger

from attrs import define, field

from ..agents.base import Turn


@define(eq=False)
class ShowChain:
    log: Logger
    # Keyed by conversation (a room's main timeline, or a thread: see `queues.Job.key`).
    # conversation -> the task showing its latest answer (each waits for the one before).
    _last: dict[Hashable, asyncio.Task[None]] = field(factory=dict)
    # conversation -> the exchanges that are answered but not written down yet, oldest first.
    _inflight: dict[Hashable, list[Turn]] = field(factory=dict)

    def last(self, key: Hashable) -> asyncio.Task[None] | None:
        """What the conversation's next answer waits for before it shows anything."""
        return self._last.get(key)

    def pending_turns(self, key: Hashable) -> list[Turn]:
        return list(self._inflight.get(key, ()))

    def then(
        self,
        key: Hashable,
        show: Callable[[], Awaitable[None]],
        turns: list[Turn],
        abandon: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Shows an answer after the conversation's previous one; its turns count as its context
        until it is written down. `abandon` runs if a stop cancels the show: its reply stream
        stops there, and sends nothing after the stop."""
        previous = self._last.get(key)
        self._inflight.setdefault(key, []).extend(turns)

        async def chained() -> None:
            try:
                if previous is not None:
                    await asyncio.gather(previous, return_exceptions=True)
                await show()
            except asyncio.CancelledError:
                if abandon is not None:
                    with suppress(Exception):
                        await abandon()
                raise
            except Exception:
                # Nobody awaits the last show: its failure is told here, and the message stays
                # recorded as not answered, for the next start.
                self.log.exception(f"Showing an answer in {key} failed")
            finally:
                inflight = self._inflight.get(key, [])
                for turn in turns:
                    inflight.remove(turn)
                if not inflight:
                    self._inflight.pop(key, None)
                if self._last.get(key) is task:
                    del self._last[key]

        task = asyncio.create_task(chained())
        self._last[key] = task

    def busy(self) -> bool:
        return bool(self._last)

    async def settle(self, key: Hashable) -> None:
        """Waits until every answer of the conversation is shown and written down."""
        last = self._last.get(key)
        if last is not None:
            await asyncio.gather(last, return_exceptions=True)

    async def stop(self) -> None:
        tasks = list(self._last.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
