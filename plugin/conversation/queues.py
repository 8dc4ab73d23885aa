"""Per-conversation FIFOs: each conversation (a working room's main timeline, or one of its
threads) is answered in order, one job at a time, by its own task.

Conversations drain in parallel, so a thread never waits for the main timeline; how many agent
calls run at once is capped elsewhere (`agent_call`). At a start every room is held until the
catch-up has queued what arrived while the bot was down, in front of what arrives live, so that
a room is answered oldest first.
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
# 🔁 on an answer: the answer edited in place with a new one (see `reactions`).
REGENERATE = "regenerate"
# A shared room's message that does not call the agent: it only joins the context, in order.
NOTE = "note"
# A queue's key: (room id, thread root or '' for the main timeline).
Key = tuple[str, str]


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
    # The thread whose conversation this is ('' for the room's main timeline).
    thread: str = ""
    # A regeneration: the user message whose answer it replaces, and that answer's turn.
    reply_to: str = ""
    answer_turn: int | None = None
    # The message's files (references; see `conversation.media_in`).
    attachments: list[Attachment] = field(factory=list)

    @property
    def key(self) -> Key:
        return (self.room_id, self.thread)


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
    _queues: dict[Key, deque[Job]] = field(init=False, factory=dict)
    _workers: dict[Key, asyncio.Task[None]] = field(init=False, factory=dict)
    _holding: bool = field(init=False, default=False)
    # After `stop`, what is still queued (a late handler's job) waits for the next start.
    _stopped: bool = field(init=False, default=False)
    _released: set[str] = field(init=False, factory=set)
    _claimed: dict[str, None] = field(init=False, factory=dict)

    def hold_all(self) -> None:
        """Holds every room until `release` (the catch-up of that room is done)."""
        self._holding = True
        self._released.clear()

    def release(self, room_id: str) -> None:
        if self._holding:
            self._released.add(room_id)
        for key in [key for key in self._queues if key[0] == room_id]:
            self._wake(key)

    def release_all(self) -> None:
        self._holding = False
        self._released.clear()
        for key in list(self._queues):
            self._wake(key)

    def enqueue(self, job: Job) -> None:
        self._queues.setdefault(job.key, deque()).append(job)
        self._wake(job.key)

    def enqueue_first(self, room_id: str, jobs: list[Job]) -> None:
        """Queues jobs, in their order, before those already waiting in their conversations."""
        for key in dict.fromkeys(job.key for job in jobs):
            mine = [job for job in jobs if job.key == key]
            self._queues.setdefault(key, deque()).extendleft(reversed(mine))
            self._wake(key)

    def take(self, room_id: str, event_ids: set[str]) -> list[Job]:
        """Takes these messages out of a room whose queue does not run (held at a start), for the
        catch-up to queue them again among the older messages, in the homeserver's order."""
        taken: list[Job] = []
        for key in [key for key in self._queues if key[0] == room_id]:
            queue = self._queues[key]
            if key in self._workers:
                continue
            mine = [job for job in queue if job.kind == MESSAGE and job.event.event_id in event_ids]
            self._queues[key] = deque(job for job in queue if not any(job is t for t in mine))
            taken += mine
        return taken

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

    def pending(self, room_id: str, thread: str | None = None) -> list[Job]:
        """The jobs waiting in the room: in all its conversations, or in one."""
        if thread is not None:
            return list(self._queues.get((room_id, thread), ()))
        return [job for key, queue in self._queues.items() if key[0] == room_id for job in queue]

    def depth(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    def busy(self) -> bool:
        """Whether anything is queued, or still being answered."""
        return bool(self._queues) or self.runner.busy()

    async def stop(self) -> None:
        """Cancels the workers. What was not answered stays in the delivery state, for the next
        start."""
        self._stopped = True
        workers = list(self._workers.values())
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await self.runner.stop()
        self._queues.clear()

    def _wake(self, key: Key) -> None:
        if self._stopped:
            return
        held = self._holding and key[0] not in self._released
        if key in self._queues and key not in self._workers and not held:
            self._workers[key] = asyncio.create_task(self._drain(key))

    async def _drain(self, key: Key) -> None:
        queue = self._queues[key]
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
            self._workers.pop(key, None)
            if not queue:
                self._queues.pop(key, None)
