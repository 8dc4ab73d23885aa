"""The delivery state of each message, written as it moves: received, answering, answered.

Received and answering are written in the background, in group commits (`db.batch`), so that
no database round trip stands between a message and its agent; answered is written once the
final answer, or a final notice, is in Matrix, with the answer's turns, and waited for, so that
the room's next message sees them. The writes keep their order: a crash loses only the newest,
and the catch-up finds from the timeline what they would have said.
"""

from __future__ import annotations

import asyncio
import json
from logging import Logger

from attrs import define, field
from mautrix.types import MessageEvent

from ..db import Store
from ..db.batch import GroupCommit
from ..db.rows import ANSWERED, ANSWERING, RECEIVED, NewTurn, RoomRow, TurnRow, now_ms
from ..media.refs import to_json
from .context import ASSISTANT, USER
from .queues import MESSAGE, NOTE, REGENERATE, Job
from .quota import today


@define(eq=False)
class Delivery:
    batch: GroupCommit
    log: Logger
    # The cursor may move past what arrives live only in a room whose catch-up is done: in the
    # others, messages sent while the bot was down (never recorded) lie behind it, and the next
    # start finds them by walking back to the cursor.
    _caught_up: set[str] = field(init=False, factory=set)
    # Rooms whose catch-up failed; and whether the catch-up still runs (until then, only the
    # rooms in `_caught_up` are done).
    _behind: set[str] = field(init=False, factory=set)
    _catching_up: bool = field(init=False, default=True)

    def catch_up_started(self) -> None:
        self._catching_up = True
        self._caught_up.clear()
        self._behind.clear()

    def caught_up(self, room_id: str, done: bool) -> None:
        (self._caught_up if done else self._behind).add(room_id)

    def catch_up_ended(self) -> None:
        """Every room the catch-up did not fail in is caught up, rooms made since included."""
        self._catching_up = False

    def moves_cursor(self, room_id: str) -> bool:
        if room_id in self._behind:
            return False
        return not self._catching_up or room_id in self._caught_up

    def received(self, evt: MessageEvent) -> None:
        content = json.dumps(evt.content.serialize())
        move_cursor = self.moves_cursor(evt.room_id)

        async def write(tx: Store) -> None:
            added = await tx.messages.add(
                evt.event_id, evt.room_id, evt.sender, evt.timestamp, content, RECEIVED
            )
            if added and move_cursor:
                await tx.rooms.set_cursor(evt.room_id, evt.event_id, evt.timestamp)

        self._background(self.batch.add(write))

    def answering(self, event_id: str) -> None:
        async def write(tx: Store) -> None:
            await tx.messages.set_state(event_id, ANSWERING)

        self._background(self.batch.add(write))

    async def answered(
        self,
        job: Job,
        room: RoomRow,
        answer: str,
        newest_event: str,
        tokens: int,
        answer_files: str = "",
    ) -> None:
        """The agent's answer is in Matrix: the exchange enters the context, the message is
        answered, and the room's cursor is the answer. `answer_files` are the references of
        the files the answer posted."""
        event_id = job.event.event_id
        files = to_json(job.attachments)

        async def write(tx: Store) -> None:
            if job.kind == MESSAGE and job.resume:
                # An interrupted answer taken over: a regeneration's has a turn to replace.
                turns = await answered_turns(tx, room.room_id, event_id)
                job.answer_turn = turns[1].id if turns is not None else None
            if job.kind == MESSAGE:
                await tx.turns.add_user_turn(
                    room.room_id, event_id, job.text, True, job.thread, job.sender, files
                )
                await tx.messages.set_state(event_id, ANSWERED)
                if self.moves_cursor(room.room_id):
                    await tx.rooms.set_cursor(room.room_id, newest_event, now_ms())
            elif job.turn_id is not None:
                await tx.turns.set_answered(job.turn_id, True)
                # A retry's or regeneration's text and files, as they were sent this time.
                await tx.turns.set_content(job.turn_id, job.text, files)
            if job.answer_turn is not None:
                # The answer was edited in place: its turn takes the new text.
                await tx.turns.set_content(job.answer_turn, answer, answer_files)
                await tx.messages.set_state(job.reply_to or event_id, ANSWERED)
            else:
                turn = NewTurn(None, ASSISTANT, answer, files=answer_files)
                await tx.turns.add_answered(room.room_id, [turn], job.thread)
            # Usage is the sender's: in a shared room, whoever called the agent.
            await tx.usage.add(job.sender, today(), 1, tokens)
            await tx.agent_usage.add(job.sender, room.agent_id, today(), 1, tokens)

        await self.batch.write(write)

    async def noted(self, job: Job, room: RoomRow) -> None:
        """A shared room's message that did not call the agent joins its conversation."""
        if job.kind != NOTE:
            return
        files = to_json(job.attachments)

        async def write(tx: Store) -> None:
            turn = NewTurn(job.event.event_id, USER, job.text, job.sender, files)
            await tx.turns.add_answered(room.room_id, [turn], job.thread)

        await self.batch.write(write)

    async def kept(self, job: Job, room: RoomRow) -> None:
        """A notice said why the agent did not answer (it failed, it is not configured, the
        day's tokens are used): the message is answered, and kept in the context for a retry."""
        event_id = job.event.event_id

        async def write(tx: Store) -> None:
            if job.kind == MESSAGE:
                files = to_json(job.attachments)
                await tx.turns.add_user_turn(
                    room.room_id, event_id, job.text, False, job.thread, job.sender, files
                )
                await tx.messages.set_state(event_id, ANSWERED)
            elif job.kind == REGENERATE:
                await tx.messages.set_state(job.reply_to, ANSWERED)

        await self.batch.write(write)

    async def settled(self, job: Job) -> None:
        """A notice said why the message did not go to the agent: it is answered, and stays out
        of the context (sending it again is how to get an answer)."""
        if job.kind != MESSAGE:
            return
        event_id = job.event.event_id

        async def write(tx: Store) -> None:
            await tx.messages.set_state(event_id, ANSWERED)

        await self.batch.write(write)

    async def drain(self) -> None:
        await self.batch.drain()

    def _background(self, done: asyncio.Future[None]) -> None:
        def report(future: asyncio.Future[None]) -> None:
            if not future.cancelled() and future.exception() is not None:
                self.log.error(f"A delivery state write failed: {future.exception()}")

        done.add_done_callback(report)


async def answered_turns(
    store: Store, room_id: str, event_id: str
) -> tuple[TurnRow, TurnRow] | None:
    """The turn of a message that was answered, and the turn of its answer, if both exist."""
    turn = await store.turns.for_event(room_id, event_id)
    if turn is None or not turn.answered:
        return None
    later = await store.turns.of_room(room_id, turn.thread_root)
    answer = next((t for t in later if t.id > turn.id and t.role == ASSISTANT), None)
    return (turn, answer) if answer is not None else None


async def reopened(store: Store, room_id: str, turn_id: int | None, thread: str) -> TurnRow | None:
    """The user turn that `!ai retry` answers again, made unanswered: an answer it had leaves
    the context, with every turn after it. None if a clear or a trim removed it meanwhile."""
    turns = await store.turns.of_room(room_id, thread)
    turn = next((t for t in turns if t.id == turn_id), None)
    if turn is not None and turn.answered:
        async with store.transaction() as tx:
            await tx.turns.delete_after(room_id, turn.id, thread)
            await tx.turns.set_answered(turn.id, False)
    return turn
