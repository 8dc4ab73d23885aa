"""Each room's answers, shown in order while the next message's agent already works.

Once an agent has answered, showing the answer (its last edit in Matrix) and writing it down take
the homeserver's and the database's time. The room's next message need not wait for them: its
agent is called at once, with the answer still in flight in its context. What the room sees
keeps its order: each answer is shown, and written, after the one before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable

from attrs import define, field

from ..agents.base import Turn


@define(eq=False)
class ShowChain:
    # Keyed by conversation (a room's main timeline, or a thread: see `queues.Job.key`).
    # conversation -> the task showing its latest answer (each waits for the one before).
    _last: dict[Hashable, asyncio.Task[None]] = field(factory=dict)
    # conversation -> the exchanges that are answered but not written down yet, oldest first.
    _inflight: dict[Hashable, list[Turn]] = field(factory=dict)

    def last(self, room_id: Hashable) -> asyncio.Task[None] | None:
        """What the room's next answer waits for before it shows anything."""
        return self._last.get(room_id)

    def pending_turns(self, room_id: Hashable) -> list[Turn]:
        return list(self._inflight.get(room_id, ()))

    def then(
        self, room_id: Hashable, show: Callable[[], Awaitable[None]], turns: list[Turn]
    ) -> None:
        """Shows an answer after the room's previous one; its turns count as the room's
        context until it is written down."""
        previous = self._last.get(room_id)
        self._inflight.setdefault(room_id, []).extend(turns)

        async def chained() -> None:
            try:
                if previous is not None:
                    await asyncio.gather(previous, return_exceptions=True)
                await show()
            finally:
                inflight = self._inflight.get(room_id, [])
                for turn in turns:
                    inflight.remove(turn)
                if not inflight:
                    self._inflight.pop(room_id, None)
                if self._last.get(room_id) is task:
                    del self._last[room_id]

        task = asyncio.create_task(chained())
        self._last[room_id] = task

    def busy(self) -> bool:
        return bool(self._last)

    async def settle(self, room_id: Hashable) -> None:
        """Waits until every answer of the room is shown and written down."""
        last = self._last.get(room_id)
        if last is not None:
            await asyncio.gather(last, return_exceptions=True)

    async def stop(self) -> None:
        tasks = list(self._last.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
