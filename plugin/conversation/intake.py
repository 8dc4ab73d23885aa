"""What enters the per-conversation queues: the messages of the room's owner and collaborators
(live and caught up), retries and compactions. A shared room's message that does not call the
agent enters its conversation as a note (see `group`).

A message is claimed before it is queued, so that it is answered once even when the live handler
and the startup catch-up both see it, and recorded as received (in the background, see
`delivery`), so that what was received and not answered is answered at the next start.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import Logger

from attrs import define, field
from mautrix.errors import MatrixError
from mautrix.types import MessageEvent, MessageType

from ..db import Store
from ..db.rows import ACTIVE, RoomRow
from ..errors import UsageError
from ..matrix.replies import ReplyTarget, message_text
from ..media import refs
from ..ops.locks import KeyedLocks
from ..ops.metrics import Metrics
from ..ops.settings import Settings
from .context import USER
from .delivery import Delivery
from .group import calls_agent, may_talk
from .queues import COMPACT, MESSAGE, NOTE, RETRY, Job, RoomQueues
from .quota import Quota
from .refusals import Refusals, these
from .threads import thread_of


def is_command(body: str, settings: Settings) -> bool:
    """What maubot treats as the plugin's command: `!` and the command word, in any case, up to
    the first space."""
    return body.startswith("!") and body[1:].split(" ", 1)[0].lower() == settings.command_prefix


def is_agent_message(evt: MessageEvent, room: RoomRow, settings: Settings) -> bool:
    """A message for the room's conversation: text or a file, from its owner, an admin or a
    collaborator (`group.may_talk`), no command, no edit.

    The live handler and the startup catch-up both decide with this, so they agree. Whether the
    owner may still use the bot is decided when it is answered (`TurnRunner`).
    """
    content = evt.content
    if refs.carries_file(evt):
        # An image, a file, a voice message or a sticker (see `media_in`); never a command.
        if content.get_edit():
            return False
    elif content.msgtype != MessageType.TEXT or content.get_edit():
        return False
    elif is_command(content.body or "", settings):
        return False
    return room.state == ACTIVE and may_talk(settings, room, evt.sender)


def job_of(
    evt: MessageEvent,
    over_quota: bool = False,
    resume: list[str] | None = None,
    thread: str = "",
    kind: str = MESSAGE,
) -> Job:
    text, attachments = refs.media_of(evt) if refs.carries_file(evt) else (message_text(evt), [])
    return Job(
        kind,
        evt.room_id,
        evt,
        evt.sender,
        text,
        over_quota=over_quota,
        resume=resume or [],
        thread=thread,
        attachments=attachments,
    )


@define(eq=False)
class Intake:
    bot_id: str
    store: Store
    queues: RoomQueues
    quota: Quota
    refusals: Refusals
    delivery: Delivery
    metrics: Metrics
    settings: Callable[[], Settings]
    log: Logger
    _locks: KeyedLocks = field(init=False, factory=KeyedLocks)
    _running: bool = field(init=False, default=False)

    def start(self) -> None:
        """The plugin starts: messages are answered, and the catch-up is yet to end."""
        self._running = True
        self.delivery.catch_up_started()

    async def stop(self) -> None:
        """Stops the queues, and writes down what arrived. What was not answered is answered at
        the next start."""
        self._running = False
        await self.queues.stop()
        await self.delivery.drain()

    def caught_up(self, room_id: str, done: bool = True) -> None:
        """The catch-up of a room is over: done, or failed (the next start does it)."""
        self.delivery.caught_up(room_id, done)

    def catch_up_ended(self) -> None:
        self.delivery.catch_up_ended()

    async def on_message(self, evt: MessageEvent) -> None:
        """The live handler: records and queues the owner's messages in working rooms."""
        if evt.sender == self.bot_id:
            return
        # The room's lock comes first, so that messages keep their arrival order.
        async with self._locks.hold(evt.room_id):
            room = await self.store.rooms.get(evt.room_id)
            settings = self.settings()
            if room is None or not is_agent_message(evt, room, settings):
                return
            thread = thread_of(evt, settings)
            if not calls_agent(evt, room, settings, self.bot_id):
                if self._running:
                    self.queues.enqueue(job_of(evt, thread=thread, kind=NOTE))
                return
            if not self.queues.claim(evt.event_id):
                return
            self.delivery.received(evt)
            self.metrics.message_in()
            if not self._running:
                # Stopping: recorded only, and answered at the next start.
                return
            limit = self.settings().pending_per_room
            if sum(job.kind == MESSAGE for job in self.queues.pending(evt.room_id)) >= limit:
                await self._refuse_pending(evt, limit)
                return
            over_quota = not self.quota.admit_message(evt.sender, evt.timestamp / 1000)
            self.queues.enqueue(job_of(evt, over_quota, thread=thread))

    async def _refuse_pending(self, evt: MessageEvent, limit: int) -> None:
        job = job_of(evt)
        try:
            await self.refusals.refuse(
                ReplyTarget.of(evt),
                "pending",
                lambda n: (
                    f"{limit} messages here are still waiting for an answer, so {these(n)} "
                    "did not go to the agent. Send it again once the answers arrived."
                ),
            )
        except MatrixError as e:
            # Recorded and not settled: the next start answers it.
            self.log.warning(f"Could not refuse {evt.event_id} in {evt.room_id}: {e}")
            return
        await self.delivery.settled(job)

    async def retry(self, room: RoomRow, evt: MessageEvent) -> None:
        """Queues the last unanswered user turn again, or the last one if all have answers: in
        the conversation (the room, or the thread) the command was sent in."""
        thread = thread_of(evt, self.settings())
        if any(job.kind == MESSAGE for job in self.queues.pending(room.room_id, thread)):
            raise UsageError(
                "An answer is still on its way in this room: retry once it has arrived."
            )
        turns = await self.store.turns.of_room(room.room_id, thread)
        user_turns = [t for t in turns if t.role == USER]
        if not user_turns:
            raise UsageError("Nothing to retry: this room's context has no message yet.")
        unanswered = [t for t in user_turns if not t.answered]
        turn = (unanswered or user_turns)[-1]
        job = Job(RETRY, room.room_id, evt, evt.sender, turn_id=turn.id, thread=thread)
        self.queues.enqueue(job)

    async def compact(self, room: RoomRow, evt: MessageEvent) -> None:
        """Queues a compaction, so that it waits for the answers already on their way."""
        thread = thread_of(evt, self.settings())
        if not await self.store.turns.has_any(room.room_id, thread):
            raise UsageError("Nothing to compact: this room's context is empty.")
        self.queues.enqueue(Job(COMPACT, room.room_id, evt, evt.sender, thread=thread))
