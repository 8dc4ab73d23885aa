"""At every start, answers once and in order what was received and not answered, and what users
sent to their working rooms while the bot was down.

maubot drops the events of its first /sync after a start, so nothing else would see those. The
delivery state says which messages were received and not answered; each room's timeline, read
back to the room's cursor, shows those the DB never saw (or lost with a wipe) and proves what
was answered already (see `matrix.replies`). The same walk rebuilds a room's context when its
history is missing from the DB, and finds replies that a crash interrupted, to complete them.

In an encrypted room the walk is decrypted with the client's crypto. A message whose key the bot
lacks gets a bounded wait for the key (asking the sender's devices for it), then is answered, or
its sender is told that it could not be decrypted. What the rebuilt context misses because it
could not be decrypted (its keys were lost with maubot's crypto store) the report says.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from attrs import define
from maubot.matrix import MaubotMatrixClient
from mautrix.types import EncryptedEvent
from mautrix.util.logging import TraceLogger

from ..conversation.intake import Intake, job_of
from ..conversation.queues import RoomQueues
from ..conversation.quota import Quota
from ..conversation.threads import thread_of
from ..conversation.undecryptable import Undecryptable, record
from ..db import Store
from ..db.batch import GroupCommit
from ..db.rows import ANSWERED, AWAITING_KEY, RECEIVED, MessageRow, RoomRow, now_ms
from ..matrix.encryption import Encryption
from ..matrix.outbox import Outbox
from ..matrix.replies import Timeline, resolve
from ..matrix.sync import latest_messages
from ..matrix.timeline import walk_back
from ..ops.settings import Settings
from .backlog import Backlog, Candidate, candidates, plan_backlog, skipped_notice
from .closing import close
from .rebuild import conversation_turns, room_messages, write_rebuilt

# How far back one room's walk may go, in events.
MAX_WALK = 1000
CONCURRENCY = 4
# Answered messages are forgotten after this long, or twice the catch-up's reach if longer.
KEEP_ANSWERED_MS = 7 * 24 * 3600 * 1000
_MESSAGE_TYPES = ["m.room.message", "m.room.encrypted", "m.sticker"]


@define
class CatchUpReport:
    rooms_checked: int = 0
    answered: int = 0
    resumed: int = 0
    closed: int = 0
    skipped: int = 0
    rebuilt: int = 0
    errors: int = 0
    # Messages whose senders were told that they could not be decrypted.
    undecryptable: int = 0
    # Encrypted events of rebuilt contexts that could not be decrypted: lost to the context.
    unreadable: int = 0

    def summary(self) -> str:
        lost = ""
        if self.unreadable:
            lost = (
                f" ({self.unreadable} encrypted events could not be decrypted, so the rebuilt "
                "context lacks them: their keys are not in maubot's crypto store, or maubot has "
                "no encryption support)"
            )
        return (
            f"catch-up: rooms={self.rooms_checked} answered={self.answered} "
            f"resumed={self.resumed} closed={self.closed} skipped={self.skipped} "
            f"rebuilt={self.rebuilt} undecryptable={self.undecryptable} "
            f"unreadable={self.unreadable}{lost} errors={self.errors}"
        )


@define(eq=False)
class CatchUp:
    client: MaubotMatrixClient
    store: Store
    outbox: Outbox
    intake: Intake
    queues: RoomQueues
    quota: Quota
    encryption: Encryption
    undecryptable: Undecryptable
    # The delivery state's writes: the catch-up's go in line with the live handler's.
    batch: GroupCommit
    settings: Callable[[], Settings]
    log: TraceLogger

    async def run(self) -> CatchUpReport:
        report = CatchUpReport()
        try:
            await self._run(report)
        finally:
            # Even a catch-up that failed (the homeserver down at start) must not keep holding
            # the live messages. The cursors stay where they are in the rooms it did not
            # reach, so that the next start walks back over what was sent while the bot was
            # down there.
            self.queues.release_all()
        self.log.info(report.summary())
        return report

    async def _run(self, report: CatchUpReport) -> None:
        rooms = await self.store.rooms.active()
        pending: dict[str, list[MessageRow]] = {}
        for row in await self.store.messages.unanswered():
            pending.setdefault(row.room_id, []).append(row)
        latest = await latest_messages(self.client, _MESSAGE_TYPES)
        with_history = await self.store.turns.rooms_with_turns()
        semaphore = asyncio.Semaphore(CONCURRENCY)

        async def one(room: RoomRow) -> None:
            newest = latest.get(room.room_id)
            rebuild = newest is not None and room.room_id not in with_history
            done = False
            try:
                if pending.get(room.room_id) or rebuild or newest not in (None, room.last_event_id):
                    async with semaphore:
                        report.rooms_checked += 1
                        await self.catch_up_room(
                            room, pending.get(room.room_id, []), rebuild, report
                        )
                done = True
            except Exception:
                report.errors += 1
                self.log.exception(f"Catch-up failed in {room.room_id}")
            finally:
                self.intake.caught_up(room.room_id, done)
                self.queues.release(room.room_id)

        await asyncio.gather(*(one(room) for room in rooms))
        self.intake.catch_up_ended()
        await self._settle_orphans(pending, {room.room_id for room in rooms})
        keep = max(KEEP_ANSWERED_MS, int(2 * self.settings().catch_up_max_age * 1000))
        await self.store.messages.prune(now_ms() - keep)

    async def _settle_orphans(self, pending: dict[str, list[MessageRow]], active: set[str]) -> None:
        """Messages of rooms that are not managed any more can never be answered there."""
        for room_id, rows in pending.items():
            if room_id not in active:
                for row in rows:
                    await self.store.messages.set_state(row.event_id, ANSWERED)

    async def catch_up_room(
        self, room: RoomRow, pending: list[MessageRow], rebuild: bool, report: CatchUpReport
    ) -> None:
        settings = self.settings()
        now = now_ms()
        cursor = room.context_start if rebuild else room.last_event_id
        # Back to the cursor whatever the age, so that what is too old is told, not lost; and
        # on past every message still to answer, whose interrupted or lost reply may lie behind
        # the cursor (a start that was cut short queued it, moved the cursor, and died).
        # Without a cursor, the whole walk.
        stop_at = {cursor} if cursor else set()
        since = min(row.sent_at for row in pending) if pending and cursor else 0
        walked = await walk_back(self.client, room.room_id, stop_at, since, MAX_WALK)
        events = await self.encryption.decrypt_timeline(room.room_id, walked)
        timeline = resolve(events, self.client.mxid)
        messages, notes = room_messages(events, room, settings, self.client.mxid)
        # A shared room's notes called no agent: they have nothing to answer.
        in_timeline = [evt for evt in messages if evt.event_id not in notes]
        states = {row.event_id: row.state for row in pending}
        states.update(await self.store.messages.states([evt.event_id for evt in in_timeline]))
        found = await self.undecryptable.read_late(
            room, candidates(pending, in_timeline), timeline, states
        )
        backlog = plan_backlog(
            found, timeline, states, self.queues.claimed, self.quota.admit_message, settings, now
        )
        await self._apply(room, backlog, timeline, rebuild, report, found)
        if rebuild:
            turns = conversation_turns(room, events, timeline, messages, notes, settings)
            await write_rebuilt(self.client, self.encryption, self.store, room, turns, settings)
            report.rebuilt += 1
            report.unreadable += len(timeline.unreadable)
        if walked:
            newest = walked[-1]
            event_id, ts = newest["event_id"], newest.get("origin_server_ts", now)

            async def move_cursor(tx: Store) -> None:
                await tx.rooms.set_cursor(room.room_id, event_id, ts)

            # In line with the live handler's writes: the cursor never passes a message whose
            # record is not written yet.
            await self.batch.write(move_cursor)

    async def _apply(
        self,
        room: RoomRow,
        backlog: Backlog,
        timeline: Timeline,
        rebuild: bool,
        report: CatchUpReport,
        found: list[Candidate],
    ) -> None:
        for evt in backlog.close:
            await close(self.batch, room, evt, timeline, rebuild, self.settings())
            report.closed += 1
        skipped = [evt for events in backlog.skipped.values() for evt in events]
        to_record = [evt for evt in backlog.record if evt not in backlog.close]

        async def record_found(tx: Store) -> None:
            for evt in to_record:
                # A skipped one too: it is answered once its notice is sent, not before.
                waiting = AWAITING_KEY if isinstance(evt, EncryptedEvent) else RECEIVED
                await record(tx, evt, waiting)

        await self.batch.write(record_found)
        if skipped:
            text = skipped_notice(backlog, self.settings())
            await self.outbox.notice_covering(room.room_id, text, [e.event_id for e in skipped])

            async def settle(tx: Store) -> None:
                for evt in skipped:
                    await tx.messages.set_state(evt.event_id, ANSWERED)

            await self.batch.write(settle)
            report.skipped += len(skipped)
        for encrypted in backlog.tell:
            await self.undecryptable.tell(room, encrypted)
            report.undecryptable += 1
        # Claimed only now: what the live handler claimed meanwhile is queued already.
        settings = self.settings()
        jobs = [
            job_of(evt, resume=resume, thread=thread_of(evt, settings))
            for evt, resume in backlog.answer
            if self.queues.claim(evt.event_id)
        ]
        report.answered += len(jobs)
        report.resumed += sum(bool(job.resume) for job in jobs)
        # The live handler may have queued some of these already (they can come in the first
        # /syncs after a start); all go in the homeserver's order, before anything newer.
        order = {evt.event_id: n for n, evt in enumerate(found)}
        jobs += self.queues.take(room.room_id, set(order))
        jobs.sort(key=lambda job: order[job.event.event_id])
        self.queues.enqueue_first(room.room_id, jobs)
