"""Per-room FIFOs: each working room is answered in order, one job at a time, by its own task.

Rooms drain in parallel; how many agent calls run at once is capped elsewhere (`agent_call`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from logging import Logger
from typing import Protocol

from attrs import define
from mautrix.types import MessageEvent

MESSAGE = "message"
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
    # The per-minute limit was exceeded when the message arrived.
    over_quota: bool = False
    # The room has seen the outcome (answer or notice); only bookkeeping remains.
    shown: bool = False


class Runner(Protocol):
    async def run(self, job: Job) -> None: ...

    async def failed(self, job: Job, error: Exception) -> None:
        """An unexpected error ended the job: tell the room, so nothing fails in silence."""
        ...


class RoomQueues:
    def __init__(self, runner: Runner, log: Logger) -> None:
        self.runner = runner
        self.log = log
        self._queues: dict[str, deque[Job]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}

    def enqueue(self, job: Job) -> None:
        self._queues.setdefault(job.room_id, deque()).append(job)
        if job.room_id not in self._workers:
            self._workers[job.room_id] = asyncio.create_task(self._drain(job.room_id))

    def pending(self, room_id: str) -> list[Job]:
        return list(self._queues.get(room_id, ()))

    def depth(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    async def stop(self) -> list[Job]:
        """Cancels the workers and returns the jobs that were not done."""
        workers = list(self._workers.values())
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        left = [job for queue in self._queues.values() for job in queue]
        self._queues.clear()
        return left

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
