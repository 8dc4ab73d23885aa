"""A message that Matrix shows answered while the DB does not: the DB catches up.

A crash between the final reply and the DB write leaves this; the catch-up finds the reply in
the timeline (`matrix.replies`) and writes what the live path would have written.
"""

from __future__ import annotations

from mautrix.types import MessageEvent

from ..conversation.delivery import answered_turns
from ..conversation.threads import thread_of
from ..conversation.undecryptable import record
from ..db import Store
from ..db.batch import GroupCommit
from ..db.rows import ANSWERED, RoomRow
from ..matrix.replies import Timeline
from ..ops.settings import Settings
from .backlog import Candidate
from .rebuild import answer_turn, user_turn


async def close(
    batch: GroupCommit,
    room: RoomRow,
    evt: Candidate,
    timeline: Timeline,
    rebuild: bool,
    settings: Settings,
) -> None:
    """The message is answered in the DB, and its exchange enters the context (a rebuilt
    context takes it from the timeline instead)."""
    event_id = evt.event_id
    answer = answer_turn(timeline, event_id)
    asked = user_turn(evt) if isinstance(evt, MessageEvent) else None
    thread = thread_of(evt, settings) if isinstance(evt, MessageEvent) else ""

    async def write(tx: Store) -> None:
        await record(tx, evt, ANSWERED)
        await tx.messages.set_state(event_id, ANSWERED)
        if rebuild or asked is None:
            return
        known = await answered_turns(tx, room.room_id, event_id)
        if known is not None:
            # A regeneration that ended in Matrix: its answer's turn takes the new text.
            if answer is not None:
                await tx.turns.set_content(known[1].id, answer.content, answer.files)
            return
        await tx.turns.add_user_turn(
            room.room_id,
            event_id,
            asked.content,
            answer is not None,
            thread,
            asked.sender,
            asked.files,
        )
        if answer is not None:
            await tx.turns.add_answered(room.room_id, [answer], thread)

    await batch.write(write)
