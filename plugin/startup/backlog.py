"""The catch-up's decisions for one room, from its timeline and its delivery state: which
messages are answered already, which to answer now and in what order, which to skip and why, and
which the bot could not decrypt (their senders are told, within the same limits).

Pure: no I/O, so every decision is tested without a server (see `catchup` for the reading and
the writing).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from attrs import define, field
from mautrix.types import EncryptedEvent, MessageEvent, SerializerError

from ..conversation.intake import is_agent_message
from ..conversation.undecryptable import Message, for_agent
from ..db.rows import ANSWERED, MessageRow, RoomRow
from ..matrix.replies import ENCRYPTED, Timeline
from ..ops.settings import Settings

# A message for the agent: readable, or encrypted with a key the bot does not hold.
Candidate = Message

MESSAGE = "m.room.message"
STICKER = "m.sticker"
TOO_OLD = "old"
OVER_CAP = "cap"
OVER_QUOTA = "quota"


@define
class Backlog:
    # Answered in Matrix, not yet in the delivery state (a crash between the two).
    close: list[Candidate] = field(factory=list)
    # Unknown to the delivery state: to record before anything else.
    record: list[Candidate] = field(factory=list)
    # To answer now, oldest first, with the parts of an interrupted reply to take over.
    answer: list[tuple[MessageEvent, list[str]]] = field(factory=list)
    # Not answered, by reason; the room gets one notice about them.
    skipped: dict[str, list[Candidate]] = field(factory=dict)
    # Could not be decrypted: each sender is told, once.
    tell: list[EncryptedEvent] = field(factory=list)

    def skip(self, reason: str, evt: Candidate) -> None:
        self.skipped.setdefault(reason, []).append(evt)

    @property
    def skipped_count(self) -> int:
        return sum(len(events) for events in self.skipped.values())


def event_of(row: MessageRow) -> Candidate | None:
    """A recorded message as the event it was, to answer it after a restart."""
    content = json.loads(row.content or "{}")
    return parse_event(
        {
            "type": ENCRYPTED if "ciphertext" in content else MESSAGE,
            "room_id": row.room_id,
            "event_id": row.event_id,
            "sender": row.sender,
            "origin_server_ts": row.sent_at,
            "content": content,
        }
    )


def parse_event(raw: dict[str, Any]) -> Candidate | None:
    """A message, or an encrypted event; None for anything else (a decrypted reaction)."""
    if raw.get("type") == STICKER and isinstance(raw.get("content"), dict):
        # What mautrix does to a live sticker: a media message of type m.sticker.
        raw = {**raw, "content": {**raw["content"], "msgtype": STICKER}}
    try:
        if raw.get("type") == ENCRYPTED:
            return EncryptedEvent.deserialize(raw)
        if raw.get("type") in (MESSAGE, STICKER):
            return MessageEvent.deserialize(raw)
    except (SerializerError, KeyError, ValueError):
        pass
    return None


def is_candidate(evt: Candidate, room: RoomRow, settings: Settings) -> bool:
    """A message for the room's agent, or one that may be and cannot be read."""
    if isinstance(evt, EncryptedEvent):
        return for_agent(evt, room, settings)
    return is_agent_message(evt, room, settings)


def candidates(pending: list[MessageRow], from_timeline: list[Candidate]) -> list[Candidate]:
    """What may need an answer, in the homeserver's order: recorded messages the walk did not
    reach (they are older), then the timeline's messages oldest first."""
    seen = {evt.event_id for evt in from_timeline}
    older = [evt for row in pending if row.event_id not in seen and (evt := event_of(row))]
    return [*older, *from_timeline]


def plan_backlog(
    events: list[Candidate],
    timeline: Timeline,
    states: dict[str, str],
    queued: Callable[[str], bool],
    admit: Callable[[str, float], bool],
    settings: Settings,
    now_ms: int,
) -> Backlog:
    """Decides for each candidate, oldest first. `states` holds the recorded state of each
    candidate the DB knows; `queued` tells the ones the live handler queued already; `admit`
    counts one against the sender's per-minute limit at its send time. What cannot be decrypted
    is told within the same limits, and counts against no quota."""
    backlog = Backlog()
    cutoff = now_ms - int(settings.catch_up_max_age * 1000)
    fresh: list[tuple[Candidate, list[str]]] = []
    for evt in events:
        state = states.get(evt.event_id)
        if timeline.answered(evt.event_id):
            if state != ANSWERED:
                backlog.close.append(evt)
            continue
        if state == ANSWERED or queued(evt.event_id):
            continue
        if state is None:
            backlog.record.append(evt)
        if evt.timestamp < cutoff:
            backlog.skip(TOO_OLD, evt)
        else:
            fresh.append((evt, timeline.interrupted(evt.event_id)))
    over = len(fresh) - settings.catch_up_max_per_room
    for evt, _ in fresh[: max(over, 0)]:
        backlog.skip(OVER_CAP, evt)
    for evt, resume in fresh[max(over, 0) :]:
        if isinstance(evt, EncryptedEvent):
            backlog.tell.append(evt)
        elif admit(evt.sender, evt.timestamp / 1000):
            backlog.answer.append((evt, resume))
        else:
            backlog.skip(OVER_QUOTA, evt)
    return backlog


def skipped_notice(backlog: Backlog, settings: Settings) -> str:
    reasons = {
        TOO_OLD: f"older than {settings.catch_up_max_age / 3600:g} h",
        OVER_CAP: f"beyond the {settings.catch_up_max_per_room} I answer per room after a break",
        OVER_QUOTA: f"over the limit of {settings.messages_per_minute} messages a minute",
    }
    parts = [f"{len(events)} {reasons[reason]}" for reason, events in backlog.skipped.items()]
    count = backlog.skipped_count
    return (
        f"While I was offline, {count} message(s) here were not answered ({', '.join(parts)}). "
        "Send them again if you still need an answer."
    )
