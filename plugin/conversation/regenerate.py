"""🔁 on an answer: the job that answers the same message again, in place.

The new answer is an edit of the old one (the same events, parts that are no longer needed
redacted), from the same context: the turns before the message. Its turn takes the new text.
"""

from __future__ import annotations

from mautrix.types import MessageEvent

from ..db import Store
from ..db.rows import RoomRow
from ..matrix.encryption import Encryption
from ..matrix.events import read_event
from ..matrix.replies import reply_target, resolve
from ..matrix.timeline import walk_back
from ..media import refs
from ..startup.backlog import parse_event
from .delivery import answered_turns
from .queues import REGENERATE, Job
from .threads import thread_root

# How far back the answer's parts are looked for, in events.
MAX_WALK = 1000


async def answered_message(
    encryption: Encryption, room_id: str, answer_event: str
) -> tuple[str, str] | None:
    """The user message that one of the bot's answers replies to, and the answer's thread."""
    event = await read_event(encryption, room_id, answer_event)
    if event is None or event.get("sender") != encryption.client.mxid:
        return None
    content = event.get("content") or {}
    message = reply_target(content)
    return (message, thread_root(content)) if message else None


async def regeneration(
    encryption: Encryption, store: Store, room: RoomRow, answer_event: str
) -> Job | None:
    """The job that answers again the message this answer replies to; None when that is not
    possible (not an answer, or the message is no longer in the context)."""
    answered = await answered_message(encryption, room.room_id, answer_event)
    if answered is None:
        return None
    message_id, _ = answered
    turns = await answered_turns(store, room.room_id, message_id)
    raw = await read_event(encryption, room.room_id, message_id)
    evt = parse_event(raw) if raw is not None else None
    if turns is None or not isinstance(evt, MessageEvent):
        return None
    turn, answer = turns
    client = encryption.client
    walked = await walk_back(client, room.room_id, {message_id}, 0, MAX_WALK)
    events = await encryption.decrypt_timeline(room.room_id, walked)
    parts = [reply.event_id for reply in resolve(events, client.mxid).replies.get(message_id, [])]
    if answer_event not in parts:
        return None
    return Job(
        REGENERATE,
        room.room_id,
        evt,
        turn.sender or evt.sender,
        turn.content,
        turn_id=turn.id,
        attachments=list(refs.from_json(turn.attachments)),
        resume=parts,
        thread=turn.thread_root,
        reply_to=message_id,
        answer_turn=answer.id,
    )
