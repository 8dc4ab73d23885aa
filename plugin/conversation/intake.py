"""What enters the per-room queues: the owner's messages (live and caught up), retries and
compactions.

Every user event is claimed in the DB before it is queued, so that it is answered once, even when
the live handler and the startup catch-up both see it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from logging import Logger

from mautrix.types import MessageEvent, MessageType

from ..db import Store
from ..db.rows import ACTIVE, RoomRow
from ..errors import UsageError
from ..matrix.replies import message_text
from ..ops import access
from ..ops.metrics import Metrics
from ..ops.settings import Settings
from .context import USER
from .queues import COMPACT, MESSAGE, RETRY, Job, RoomQueues
from .quota import Quota


def is_agent_message(evt: MessageEvent, room: RoomRow, settings: Settings) -> bool:
    """A text message for the room's agent: from its owner or an admin, no command, no edit.

    The live handler and the startup catch-up both decide with this, so they agree.
    """
    content = evt.content
    if content.msgtype != MessageType.TEXT or content.get_edit():
        return False
    words = (content.body or "").split(maxsplit=1)
    if words and words[0] == f"!{settings.command_prefix}":
        return False
    return room.state == ACTIVE and access.may_act_in_room(settings, room.owner, evt.sender)


class Intake:
    def __init__(
        self,
        bot_id: str,
        store: Store,
        queues: RoomQueues,
        quota: Quota,
        metrics: Metrics,
        settings: Callable[[], Settings],
        log: Logger,
    ) -> None:
        self.bot_id = bot_id
        self.store = store
        self.queues = queues
        self.quota = quota
        self.metrics = metrics
        self.settings = settings
        self.log = log
        self._locks: dict[str, asyncio.Lock] = {}
        self._running = False

    def start(self) -> None:
        self._running = True

    async def stop(self) -> None:
        """Stops the queues. Messages not answered yet are unclaimed for the next catch-up."""
        self._running = False
        for job in await self.queues.stop():
            if job.kind != MESSAGE:
                continue
            try:
                await self.store.events.unclaim(job.event.event_id)
            except Exception:
                self.log.exception(f"Could not unclaim {job.event.event_id}")

    async def on_message(self, evt: MessageEvent) -> None:
        """The live handler: queues the owner's text messages in working rooms."""
        # The room's lock is the first thing awaited, so that messages keep their arrival order
        # through the checks below.
        async with self._lock(evt.room_id):
            if await self.accepts(evt):
                await self._submit(evt)

    async def accepts(self, evt: MessageEvent) -> bool:
        """Whether an event is a message for the room's agent."""
        if evt.sender == self.bot_id:
            return False
        room = await self.store.rooms.get(evt.room_id)
        return room is not None and is_agent_message(evt, room, self.settings())

    async def submit(self, evt: MessageEvent) -> bool:
        """Claims an event and queues it on its room's FIFO. False if it was already handled."""
        async with self._lock(evt.room_id):
            return await self._submit(evt)

    def _lock(self, room_id: str) -> asyncio.Lock:
        return self._locks.setdefault(room_id, asyncio.Lock())

    async def _submit(self, evt: MessageEvent) -> bool:
        if not self._running:
            # Before start or after stop nothing is claimed: the catch-up answers it later.
            return False
        if not await self.store.events.claim(evt.event_id, evt.room_id):
            return False
        self.metrics.message_in()
        over_quota = not self.quota.admit_message(evt.sender)
        text = message_text(evt)
        job = Job(MESSAGE, evt.room_id, evt, evt.sender, text=text, over_quota=over_quota)
        self.queues.enqueue(job)
        return True

    async def retry(self, room: RoomRow, evt: MessageEvent) -> None:
        """Queues the last unanswered user turn again, or the last one if all have answers."""
        if any(not job.shown for job in self.queues.pending(room.room_id)):
            raise UsageError(
                "An answer is still on its way in this room: retry once it has arrived."
            )
        user_turns = [t for t in await self.store.turns.of_room(room.room_id) if t.role == USER]
        if not user_turns:
            raise UsageError("Nothing to retry: this room's context has no message yet.")
        unanswered = [t for t in user_turns if not t.answered]
        turn = (unanswered or user_turns)[-1]
        self.queues.enqueue(Job(RETRY, room.room_id, evt, evt.sender, turn_id=turn.id))

    async def compact(self, room: RoomRow, evt: MessageEvent) -> None:
        """Queues a compaction, so that it waits for the answers already on their way."""
        if not await self.store.turns.has_any(room.room_id):
            raise UsageError("Nothing to compact: this room's context is empty.")
        self.queues.enqueue(Job(COMPACT, room.room_id, evt, evt.sender))
