"""Per-room FIFOs: each working room is answered in order, one job at a time, by its own task.

Rooms drain in parallel; how many agent calls run at once is capped elsewhere (`agent_call`).
At a start every room is held until the catch-up has queued what arrived while the bot was
down, in front of what arrives live, so that a room is answered oldest first.
"""

from __future__ import annotations

import asyncio
from collections import deque
from logging import Logger
from typing import Protocol

from attrs import define, field
from mautrix.types import MessageEvent

from ..agents.files import Attachment

MESSAGE = "message"
# Messages remembered as claimed in this run; the oldest are forgotten first (by then they are
# answered, and their delivery state says so).
MAX_CLAIMED = 100_000
RETRY = "retry"
COMPACT = "compact"


@define
class Job:
    kind: str
    room_id: str
    # The event the bot's answer relates to: the user's message, or the command.
    event: MessageEvent
    sender: str
    text: str = ""
    # The user turn a retry answers again.
    turn_id: int | None = None
    # The per-minute limit was exceeded when the message was sent.
    over_quota: bool = False
    # The parts of an interrupted reply to this message, to edit into the complete answer.
    resume: list[str] = field(factory=list)
    # The message's files (references; see `conversation.media_in`).
    attachments: list[Attachment] = field(factory=list)


class Runner(Protocol):
    async def run(self, job: Job) -> None: ...

    async def failed(self, job: Job, error: Exception) -> None:
        """An unexpected error ended the job: tell the room, so nothing fails in silence."""
        ...

    async def stop(self) -> None:
        """Stops what the runner still does after its jobs (answers being shown)."""
        ...

    def busy(self) -> bool:
        """Whether the runner still shows answers of jobs it finished."""
        ...


@define(eq=False)
class RoomQueues:
    runner: Runner
    log: Logger
    _queues: dict[str, deque[Job]] = field(init=False, factory=dict)
    _workers: dict[str, asyncio.Task[None]] = field(init=False, factory=dict)
    _holding: bool = field(init=False, default=False)
    _released: set[str] = field(init=False, factory=set)
    _claimed: dict[str, None] = field(init=False, factory=dict)

    def hold_all(self) -> None:
        """Holds every room until `release` (the catch-up of that room is done)."""
        self._holding = True
        self._released.clear()

    def release(self, room_id: str) -> None:
        if self._holding:
            self._released.add(room_id)
        self._wake(room_id)

    def release_all(self) -> None:
        self._holding = False
        self._released.clear()
        for room_id in list(self._queues):
            self._wake(room_id)

    def enqueue(self, job: Job) -> None:
        self._queues.setdefault(job.room_id, deque()).append(job)
        self._wake(job.room_id)

    def enqueue_first(self, room_id: str, jobs: list[Job]) -> None:
        """Queues jobs, in their order, before those already waiting in the room."""
        self._queues.setdefault(room_id, deque()).extendleft(reversed(jobs))
        self._wake(room_id)

    def claim(self, event_id: str) -> bool:
        """Claims a message for this run: False if it was queued before, by the live handler
        or the catch-up, so that each is answered once."""
        if event_id in self._claimed:
            return False
        self._claimed[event_id] = None
        if len(self._claimed) > MAX_CLAIMED:
            del self._claimed[next(iter(self._claimed))]
        return True

    def claimed(self, event_id: str) -> bool:
        return event_id in self._claimed

    def pending(self, room_id: str) -> list[Job]:
        return list(self._queues.get(room_id, ()))

    def depth(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    def busy(self) -> bool:
        """Whether anything is queued, or still being answered."""
        return bool(self._queues) or self.runner.busy()

    async def stop(self) -> None:
        """Cancels the workers. What was not answered stays in the delivery state, for the next
        start."""
        workers = list(self._workers.values())
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await self.runner.stop()
        self._queues.clear()

    def _wake(self, room_id: str) -> None:
        held = self._holding and room_id not in self._released
        if room_id in self._queues and room_id not in self._workers and not held:
            self._workers[room_id] = asyncio.create_task(self._drain(room_id))

    async def _drain(self, room_id: str) -> None:
        queue = self._queues[room_id]
        try:
            while queue:
                job = queue[0]
                try:
                    await self.runner.run(job)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    self.log.exception(f"Failed to handle {job.kind} {job.event.event_id}")
                    await self.runner.failed(job, e)
                queue.popleft()
        finally:
            self._workers.pop(room_id, None)
            if not queue:
                self._queues.pop(room_id, None)
