"""Answers, exactly once, what users sent to their working rooms while the bot was down.

maubot drops the events of its first /sync after a start, so nothing else would see them. Whether
a message was answered is decided by the DB marks, and where those are missing (a wiped DB) by the
room timeline itself: the bot's replies point at the user's event with m.in_reply_to.
The same timeline walk rebuilds a room's context when its history is missing from the DB.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from attrs import define
from maubot.matrix import MaubotMatrixClient, MaubotMessageEvent
from mautrix.types import MessageEvent, SerializerError
from mautrix.util.logging import TraceLogger

from ..conversation.intake import is_agent_message
from ..db import Store
from ..db.rows import RoomRow
from ..matrix.outbox import Outbox
from ..matrix.replies import Timeline, is_agent_reply, reply_target, resolve
from ..matrix.sync import fresh_initial_sync
from ..matrix.timeline import walk_back
from ..ops.settings import Settings

# How far back one room's walk may go, in events, when looking for its context start.
MAX_WALK = 1000
CONCURRENCY = 4
_LATEST_FILTER = {
    "room": {
        "timeline": {"limit": 1, "types": ["m.room.message"]},
        "state": {"types": []},
        "account_data": {"types": []},
        "ephemeral": {"types": []},
    },
    "presence": {"types": []},
    "account_data": {"types": []},
}

Submit = Callable[[MaubotMessageEvent], Awaitable[bool]]


@define
class CatchUpReport:
    rooms_checked: int = 0
    answered: int = 0
    skipped: int = 0
    rebuilt: int = 0
    errors: int = 0


class CatchUp:
    def __init__(
        self,
        client: MaubotMatrixClient,
        store: Store,
        outbox: Outbox,
        settings: Callable[[], Settings],
        submit: Submit,
        log: TraceLogger,
    ) -> None:
        self.client = client
        self.outbox = outbox
        self.store = store
        self.settings = settings
        self.submit = submit
        self.log = log

    def is_user_message(self, ev: dict[str, Any], room: RoomRow) -> bool:
        """A message the live handler would have sent to the agent."""
        if ev.get("type") != "m.room.message" or ev.get("sender") == self.client.mxid:
            return False
        try:
            evt = MessageEvent.deserialize(ev)
        except SerializerError:
            return False
        return is_agent_message(evt, room, self.settings())

    async def run(self) -> CatchUpReport:
        report = CatchUpReport()
        rooms = await self.store.rooms.active()
        latest = await self._latest_messages()
        with_history = await self.store.turns.rooms_with_turns()
        semaphore = asyncio.Semaphore(CONCURRENCY)

        async def one(room: RoomRow) -> None:
            last = latest.get(room.room_id)
            rebuild = room.room_id not in with_history
            pending = (
                last is not None
                and last.get("sender") != self.client.mxid
                and last.get("event_id") != room.last_event_id
                and not await self.store.events.is_processed(last.get("event_id", ""))
            )
            if not (rebuild or pending):
                return
            async with semaphore:
                report.rooms_checked += 1
                try:
                    await self.catch_up_room(room, rebuild, report)
                except Exception:
                    report.errors += 1
                    self.log.exception(f"Catch-up failed in {room.room_id}")

        await asyncio.gather(*(one(room) for room in rooms))
        self.log.info(
            f"catch-up: rooms={report.rooms_checked} answered={report.answered} "
            f"skipped={report.skipped} rebuilt={report.rebuilt} errors={report.errors}"
        )
        return report

    async def _latest_messages(self) -> dict[str, dict[str, Any]]:
        """The newest message of every joined room, in one request."""
        data = await fresh_initial_sync(self.client, _LATEST_FILTER, full_state=False)
        latest = {}
        for room_id, room in ((data.get("rooms") or {}).get("join") or {}).items():
            events = (room.get("timeline") or {}).get("events") or []
            if events:
                latest[room_id] = events[-1]
        return latest

    async def catch_up_room(self, room: RoomRow, rebuild: bool, report: CatchUpReport) -> None:
        settings = self.settings()
        now = int(time.time() * 1000)
        cutoff = now - int(settings.catch_up_max_age * 1000)
        stop_at = {e for e in (room.context_start,) if e}
        if not rebuild and room.last_event_id:
            stop_at.add(room.last_event_id)
        events = await walk_back(
            self.client, room.room_id, stop_at, 0 if rebuild else cutoff, MAX_WALK
        )
        timeline = resolve(events, self.client.mxid)
        candidates = [ev for ev in timeline.events if self.is_user_message(ev, room)]
        cursor_ts = room.last_event_ts
        unanswered: list[dict[str, Any]] = []
        for ev in candidates:
            if ev["event_id"] in timeline.answered or ev.get("origin_server_ts", 0) <= cursor_ts:
                # Answered before (the timeline proves it), or behind the cursor: mark it, so
                # that no later path answers it again.
                await self.store.events.claim(ev["event_id"], room.room_id)
            elif not await self.store.events.is_processed(ev["event_id"]):
                unanswered.append(ev)
        if rebuild:
            await self._rebuild(room, timeline, {ev["event_id"] for ev in unanswered}, settings)
            report.rebuilt += 1
        fresh = [ev for ev in unanswered if ev.get("origin_server_ts", 0) >= cutoff]
        skipped = len(unanswered) - len(fresh)
        if len(fresh) > settings.catch_up_max_per_room:
            skipped += len(fresh) - settings.catch_up_max_per_room
            fresh = fresh[len(fresh) - settings.catch_up_max_per_room :]
        answered_ids = {ev["event_id"] for ev in fresh}
        for ev in unanswered:
            if ev["event_id"] not in answered_ids:
                await self.store.events.claim(ev["event_id"], room.room_id)
        if skipped:
            report.skipped += skipped
            hours = settings.catch_up_max_age / 3600
            await self.outbox.notice(
                room.room_id,
                f"While I was offline, {skipped} message(s) here were not answered: I answer "
                f"at most {settings.catch_up_max_per_room} per room, none older than "
                f"{hours:g} h. Send them again if you still need an answer.",
            )
        for ev in fresh:
            evt = MaubotMessageEvent(MessageEvent.deserialize(ev), self.client)
            if await self.submit(evt):
                report.answered += 1
        # The cursor moves past what is settled here. Submitted messages move it themselves
        # once answered, so one still queued at a stop is found again by the next catch-up.
        first_submitted = fresh[0].get("origin_server_ts", 0) if fresh else None
        settled = [
            ev
            for ev in timeline.events
            if first_submitted is None or ev.get("origin_server_ts", 0) < first_submitted
        ]
        if settled:
            await self.store.rooms.set_cursor(
                room.room_id, settled[-1]["event_id"], settled[-1].get("origin_server_ts", 0)
            )

    async def _rebuild(
        self, room: RoomRow, timeline: Timeline, excluded: set[str], settings: Settings
    ) -> None:
        """Rebuilds a wiped history from the timeline, newest turns first, up to the budget."""
        agent = settings.agents.get(room.agent_id)
        budget = (agent.max_context_tokens if agent else 8000) * 4
        users = {
            ev["event_id"]: ev
            for ev in timeline.events
            if self.is_user_message(ev, room) and ev["event_id"] not in excluded
        }
        turns: list[tuple[str | None, str, str]] = []
        for ev in timeline.events:
            if ev["event_id"] in users:
                turns.append((ev["event_id"], "user", ev["content"]["body"]))
            elif ev.get("sender") == self.client.mxid and is_agent_reply(ev.get("content") or {}):
                if reply_target(ev["content"]) in users:
                    turns.append((ev["event_id"], "assistant", timeline.final_text[ev["event_id"]]))
        kept: list[tuple[str | None, str, str]] = []
        size = 0
        for turn in reversed(turns):
            size += len(turn[2])
            if size > budget:
                break
            kept.append(turn)
        if kept:
            await self.store.turns.add_answered(room.room_id, reversed(kept))
