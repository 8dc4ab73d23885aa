"""Rebuilding a wiped context from the timeline: each conversation (the main timeline and every
thread) from its start on, a shared room's messages with their senders, and a fork's context
up to the message it was forked at, read from the room it came from.

`conversation_turns` is pure; `fork_prefix` reads the origin room's timeline.
"""

from __future__ import annotations

from typing import Any

from maubot.matrix import MaubotMatrixClient
from mautrix.types import MessageEvent

from ..conversation.context import ASSISTANT, USER
from ..conversation.group import calls_agent
from ..conversation.threads import thread_of, thread_root
from ..db import Store
from ..db.rows import ACTIVE, NewTurn, RoomRow
from ..matrix.encryption import Encryption
from ..matrix.replies import Timeline, message_text, reply_target, resolve
from ..matrix.timeline import walk_back
from ..media.refs import attachment_of, carries_file, media_of, to_json
from ..ops.settings import Settings
from .backlog import Candidate, is_candidate, parse_event

MAX_WALK = 1000


def room_messages(
    events: list[dict[str, Any]], room: RoomRow, settings: Settings, bot_id: str
) -> tuple[list[Candidate], set[str]]:
    """The messages of the room's conversations, oldest first (with those that could not be
    decrypted), and which of them are notes (a shared room's messages that did not call the
    agent)."""
    messages: list[Candidate] = []
    notes: set[str] = set()
    for raw in events:
        if raw.get("sender") == bot_id:
            continue
        evt = parse_event({**raw, "room_id": room.room_id})
        if evt is None or not is_candidate(evt, room, settings):
            continue
        messages.append(evt)
        if isinstance(evt, MessageEvent) and not calls_agent(evt, room, settings, bot_id):
            notes.add(evt.event_id)
    return messages, notes


def conversation_turns(
    room: RoomRow,
    events: list[dict[str, Any]],
    timeline: Timeline,
    messages: list[Candidate],
    notes: set[str],
    settings: Settings,
) -> dict[str, list[NewTurn]]:
    """Thread ('' for the main timeline) -> its turns: the answered messages with their answers,
    and the notes; a thread's from the start recorded in the binding on."""
    position = {e.get("event_id"): n for n, e in enumerate(events)}
    turns: dict[str, list[NewTurn]] = {}
    for evt in messages:
        if not isinstance(evt, MessageEvent):
            continue  # not decrypted: nothing to rebuild from
        thread = thread_of(evt, settings)
        start = room.thread_starts.get(thread) if thread else None
        if start is not None and position.get(evt.event_id, 0) <= position.get(start, -1):
            continue
        if evt.event_id not in notes and not timeline.answered(evt.event_id):
            continue
        into = turns.setdefault(thread, [])
        into.append(user_turn(evt))
        answer = answer_turn(timeline, evt.event_id) if evt.event_id not in notes else None
        if answer is not None:
            into.append(answer)
    return turns


def user_turn(evt: MessageEvent) -> NewTurn:
    """A message as its context turn; a file is kept as its reference, since its bytes are in
    Matrix (see `media.refs`)."""
    text, files = media_of(evt) if carries_file(evt) else (message_text(evt), [])
    return NewTurn(evt.event_id, USER, text, evt.sender, to_json(files))


def answer_turn(timeline: Timeline, event_id: str) -> NewTurn | None:
    """The bot's final answer to a message as its context turn, with the files it posted."""
    answer = timeline.answer_text(event_id)
    if answer is None:
        return None
    replies = timeline.replies.get(event_id) or []
    posted = [a for r in replies if (a := attachment_of(r.content)) is not None]
    return NewTurn(None, ASSISTANT, answer, files=to_json(posted))


def within(turns: list[NewTurn], budget_chars: int) -> list[NewTurn]:
    """The newest turns that fit in the budget, oldest first."""
    kept: list[NewTurn] = []
    size = 0
    for turn in reversed(turns):
        size += len(turn.content)
        if size > budget_chars:
            break
        kept.append(turn)
    return kept[::-1]


async def fork_prefix(
    client: MaubotMatrixClient,
    encryption: Encryption,
    room: RoomRow,
    origin: RoomRow | None,
    settings: Settings,
) -> list[NewTurn]:
    """A fork's context from the room it came from: that conversation up to the exchange of the
    message it was forked at."""
    if not room.fork_room or not room.fork_event:
        return []
    # The origin's own row says who talked there; without it (not managed any more), the owner.
    if origin is None or origin.state != ACTIVE:
        origin = RoomRow.new(room.fork_room, room.binding, "")
        origin.collaborators = ()
    stop_at = {origin.context_start} if origin.context_start else set()
    walked = await walk_back(client, room.fork_room, stop_at, 0, MAX_WALK)
    events = await encryption.decrypt_timeline(room.fork_room, walked)
    by_id = {e.get("event_id"): e for e in events}
    target = by_id.get(room.fork_event)
    if target is None:
        return []
    content = target.get("content") or {}
    message_id = reply_target(content) if target.get("sender") == client.mxid else room.fork_event
    message = by_id.get(message_id or "")
    if message is None:
        return []
    thread = thread_root(message.get("content") or {}) if settings.threads else ""
    upto = events[: events.index(message) + 1]
    messages, notes = room_messages(upto, origin, settings, client.mxid)
    timeline = resolve(events, client.mxid)
    return conversation_turns(origin, events, timeline, messages, notes, settings).get(thread, [])


async def write_rebuilt(
    client: MaubotMatrixClient,
    encryption: Encryption,
    store: Store,
    room: RoomRow,
    turns: dict[str, list[NewTurn]],
    settings: Settings,
) -> None:
    """Writes a wiped history rebuilt from the timeline, newest turns first, up to the budget:
    each conversation's answered messages and their answers (a fork's, after the turns of the
    room it came from)."""
    agent = settings.agents.get(room.agent_id)
    budget = (agent.max_context_tokens if agent else 8000) * 4
    if room.fork_room:
        origin = await store.rooms.get(room.fork_room)
        prefix = await fork_prefix(client, encryption, room, origin, settings)
        turns[""] = [*prefix, *turns.get("", [])]
    for thread, conversation in turns.items():
        kept = within(conversation, budget)
        if kept:
            await store.turns.add_answered(room.room_id, kept, thread)
