"""At every start, answers once and in order what was received and not answered, and what users
sent to their working rooms while the bot was down.

maubot drops the events of its first /sync after a start, so nothing else would see those. The
delivery state says which messages were received and not answered; each room's timeline, read
back to the room's cursor, shows those the DB never saw (or lost with a wipe) and proves what
was answered already (see `matrix.replies`). The same walk rebuilds a room's context when its
history is missing from the DB, and finds replies that a crash interrupted, to complete them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from attrs import define
from maubot.matrix import MaubotMatrixClient
from mautrix.types import MessageEvent
from mautrix.util.logging import TraceLogger

from ..conversation.context import ASSISTANT, USER
from ..conversation.intake import Intake, is_agent_message, job_of
from ..conversation.queues import RoomQueues
from ..conversation.quota import Quota
from ..db import Store
from ..db.rows import ANSWERED, RECEIVED, MessageRow, RoomRow, now_ms
from ..db.tables import NewTurn
from ..matrix.outbox import Outbox
from ..matrix.replies import Timeline, resolve
from ..matrix.sync import fresh_initial_sync
from ..matrix.timeline import walk_back
from ..media.refs import attachment_of, carries_file, media_of, to_json
from ..ops.settings import Settings
from .backlog import Backlog, candidates, parse_event, plan_backlog, skipped_notice

# How far back one room's walk may go, in events.
MAX_WALK = 1000
CONCURRENCY = 4
# Answered messages are forgotten after this long, or twice the catch-up's reach if longer.
KEEP_ANSWERED_MS = 7 * 24 * 3600 * 1000
_MESSAGE_TYPES = ["m.room.message", "m.room.encrypted", "m.sticker"]
_LATEST_FILTER = {
    "room": {
        "timeline": {"limit": 1, "types": _MESSAGE_TYPES},
        "state": {"types": []},
        "account_data": {"types": []},
        "ephemeral": {"types": []},
    },
    "presence": {"types": []},
    "account_data": {"types": []},
}


@define
class CatchUpReport:
    rooms_checked: int = 0
    answered: int = 0
    resumed: int = 0
    closed: int = 0
    skipped: int = 0
    rebuilt: int = 0
    errors: int = 0

    def summary(self) -> str:
        return (
            f"catch-up: rooms={self.rooms_checked} answered={self.answered} "
            f"resumed={self.resumed} closed={self.closed} skipped={self.skipped} "
            f"rebuilt={self.rebuilt} errors={self.errors}"
        )


@define(eq=False)
class CatchUp:
    client: MaubotMatrixClient
    store: Store
    outbox: Outbox
    intake: Intake
    queues: RoomQueues
    quota: Quota
    settings: Callable[[], Settings]
    log: TraceLogger

    async def run(self) -> CatchUpReport:
        report = CatchUpReport()
        rooms = await self.store.rooms.active()
        pending: dict[str, list[MessageRow]] = {}
        for row in await self.store.messages.unanswered():
            pending.setdefault(row.room_id, []).append(row)
        latest = await self._latest_events()
        with_history = await self.store.turns.rooms_with_turns()
        semaphore = asyncio.Semaphore(CONCURRENCY)

        async def one(room: RoomRow) -> None:
            newest = latest.get(room.room_id)
            rebuild = newest is not None and room.room_id not in with_history
            try:
                if pending.get(room.room_id) or rebuild or newest not in (None, room.last_event_id):
                    async with semaphore:
                        report.rooms_checked += 1
                        await self.catch_up_room(
                            room, pending.get(room.room_id, []), rebuild, report
                        )
            except Exception:
                report.errors += 1
                self.log.exception(f"Catch-up failed in {room.room_id}")
            finally:
                self.intake.caught_up(room.room_id)
                self.queues.release(room.room_id)

        try:
            await asyncio.gather(*(one(room) for room in rooms))
            await self._settle_orphans(pending, {room.room_id for room in rooms})
            settings = self.settings()
            keep = max(KEEP_ANSWERED_MS, int(2 * settings.catch_up_max_age * 1000))
            await self.store.messages.prune(now_ms() - keep)
        finally:
            self.queues.release_all()
        self.log.info(report.summary())
        return report

    async def _latest_events(self) -> dict[str, str]:
        """The id of the newest message of every joined room, in one request."""
        data = await fresh_initial_sync(self.client, _LATEST_FILTER, full_state=False)
        latest = {}
        for room_id, room in ((data.get("rooms") or {}).get("join") or {}).items():
            events = (room.get("timeline") or {}).get("events") or []
            if events:
                latest[room_id] = events[-1].get("event_id")
        return latest

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
        # Back to the cursor whatever the age, so that what is too old is told, not lost.
        stop_at = {cursor} if cursor else set()
        events = await walk_back(self.client, room.room_id, stop_at, 0, MAX_WALK)
        timeline = resolve(events, self.client.mxid)
        in_timeline = [
            evt
            for raw in events
            if raw.get("sender") != self.client.mxid
            and (evt := parse_event(raw)) is not None
            and is_agent_message(evt, room, settings)
        ]
        found = candidates(pending, in_timeline)
        states = {row.event_id: row.state for row in pending}
        states.update(await self.store.messages.states([evt.event_id for evt in in_timeline]))
        backlog = plan_backlog(
            found, timeline, states, self.queues.claimed, self.quota.admit_message, settings, now
        )
        await self._apply(room, backlog, timeline, report)
        if rebuild:
            await self._rebuild(room, timeline, in_timeline, settings)
            report.rebuilt += 1
        if events:
            newest = events[-1]
            await self.store.rooms.set_cursor(
                room.room_id, newest["event_id"], newest.get("origin_server_ts", now)
            )

    async def _apply(
        self, room: RoomRow, backlog: Backlog, timeline: Timeline, report: CatchUpReport
    ) -> None:
        for evt in backlog.record:
            await _record(self.store, evt, RECEIVED)
        for evt in backlog.close:
            await self._close(room, evt, timeline)
            report.closed += 1
        if backlog.skipped:
            skipped = [evt.event_id for events in backlog.skipped.values() for evt in events]
            text = skipped_notice(backlog, self.settings())
            await self.outbox.notice_covering(room.room_id, text, skipped)
            for event_id in skipped:
                await self.store.messages.set_state(event_id, ANSWERED)
            report.skipped += len(skipped)
        # Claimed only now: what the live handler claimed meanwhile is queued already.
        jobs = [
            job_of(evt, resume=resume)
            for evt, resume in backlog.answer
            if self.queues.claim(evt.event_id)
        ]
        self.queues.enqueue_first(room.room_id, jobs)
        report.answered += len(jobs)
        report.resumed += sum(bool(job.resume) for job in jobs)

    async def _close(self, room: RoomRow, evt: MessageEvent, timeline: Timeline) -> None:
        """Matrix has the final answer and the DB missed it: the DB catches up, answer and all."""
        event_id = evt.event_id
        text = timeline.answer_text(event_id)
        async with self.store.transaction() as tx:
            await _record(tx, evt, ANSWERED)
            await tx.messages.set_state(event_id, ANSWERED)
            turn = await tx.turns.for_event(room.room_id, event_id)
            if turn is not None and not turn.answered and text is not None:
                await tx.turns.add_answered(room.room_id, [(None, ASSISTANT, text)])
                await tx.turns.set_answered(turn.id, True)

    async def _rebuild(
        self,
        room: RoomRow,
        timeline: Timeline,
        messages: list[MessageEvent],
        settings: Settings,
    ) -> None:
        """Rebuilds a wiped history from the timeline, newest turns first, up to the budget: the
        messages that were answered, and their answers."""
        agent = settings.agents.get(room.agent_id)
        budget = (agent.max_context_tokens if agent else 8000) * 4
        turns: list[NewTurn] = []
        for evt in messages:
            if not timeline.answered(evt.event_id):
                continue
            # A file is kept as its reference: its bytes are in Matrix (see `media.refs`).
            text, files = media_of(evt) if carries_file(evt) else (evt.content.body or "", [])
            turns.append((evt.event_id, USER, text, to_json(files)))
            answer = timeline.answer_text(evt.event_id)
            if answer is not None:
                replies = timeline.replies.get(evt.event_id) or []
                posted = [a for r in replies if (a := attachment_of(r.content)) is not None]
                turns.append((None, ASSISTANT, answer, to_json(posted)))
        kept: list[NewTurn] = []
        size = 0
        for turn in reversed(turns):
            size += len(turn[2])
            if size > budget:
                break
            kept.append(turn)
        if kept:
            await self.store.turns.add_answered(room.room_id, reversed(kept))


async def _record(store: Store, evt: MessageEvent, state: str) -> None:
    content = json.dumps(evt.content.serialize())
    await store.messages.add(evt.event_id, evt.room_id, evt.sender, evt.timestamp, content, state)
