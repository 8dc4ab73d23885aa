"""A working room's context: its turns since the last clear, trimming, memory, new contexts.

Sizes are estimated at about four characters per token, which is close enough for English text
and needs no tokenizer. The system prompt and the memory are never trimmed; turns go oldest first.
"""

from __future__ import annotations

from attrs import define, frozen

from ..agents.base import AgentRequest, Turn
from ..db import Store
from ..db.rows import NewTurn, RoomRow, TurnRow
from ..matrix.binding import deterministic_chat_id, new_chat_id
from ..media import refs
from ..ops.settings import AgentSettings
from ..spaces.bindings import Bindings
from .threads import ThreadRoots, thread_chat_id, with_start

CHARS_PER_TOKEN = 4
# The id of a turn not stored yet: after every stored one.
UNSTORED = 2**62
# The id of a thread's seed (its root, read from Matrix): before every stored turn.
SEED = -1
USER = "user"
ASSISTANT = "assistant"
# A compaction summary opens the new context as a system turn.
SUMMARY = "system"
SUMMARY_PREFIX = "Summary of the earlier conversation:\n"
COMPACT_PROMPT = (
    "Summarise our conversation so far in a few short paragraphs. Keep every fact, name, "
    "preference and decision that later messages may rely on. Answer with the summary only."
)
MEMORY_HEADING = "What the user asked you to remember:"


def estimate_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def chat_id_of(room: RoomRow, thread: str = "") -> str:
    # Never written back here: reconciliation backfills a missing chat id (Matrix first).
    chat_id = room.chat_id or deterministic_chat_id(room.room_id)
    if thread:
        return thread_chat_id(chat_id, thread, room.thread_starts.get(thread))
    return chat_id


def system_prompt(agent: AgentSettings, memory: list[str]) -> str:
    parts = [agent.system_prompt] if agent.system_prompt else []
    if memory:
        parts.append("\n".join([MEMORY_HEADING, *(f"- {entry}" for entry in memory)]))
    return "\n\n".join(parts)


def trim(turns: list[TurnRow], fixed_tokens: int, limit: int) -> tuple[list[TurnRow], int]:
    """Drops the oldest turns until everything fits in `limit`; the newest turn always stays."""
    total = fixed_tokens + sum(estimate_tokens(t.content) for t in turns)
    first = 0
    while total > limit and first < len(turns) - 1:
        total -= estimate_tokens(turns[first].content)
        first += 1
    return turns[first:], total


@frozen
class ContextSummary:
    turns: int
    unanswered: int
    tokens: int
    limit: int
    chat_id: str
    share_memory: bool
    memory_entries: int


@define(eq=False)
class ContextManager:
    store: Store
    bindings: Bindings
    roots: ThreadRoots

    async def memory_for(self, room: RoomRow, sender: str = "") -> list[str]:
        """The owner's shared memory. In a shared room only the owner's own messages get it:
        a collaborator never sees it, and no collaborator's memory enters anyone's room."""
        if not room.share_memory or (room.collaborators and sender and sender != room.owner):
            return []
        return [entry.content for entry in await self.store.memory.of_user(room.owner)]

    async def conversation_turns(self, room: RoomRow, thread: str = "") -> list[TurnRow]:
        """The conversation's stored turns; a thread's open with its root, unless the thread
        was started anew (a clear or compaction inside it)."""
        turns = await self.store.turns.of_room(room.room_id, thread)
        if not thread or thread in room.thread_starts:
            return turns
        seed = await self.roots.seed(room.room_id, thread)
        if seed is None:
            return turns
        first = TurnRow(SEED, room.room_id, thread, seed.role, seed.content, True, 0, thread)
        first.sender = seed.sender
        return [first, *turns]

    async def request_for(
        self,
        room: RoomRow,
        agent: AgentSettings,
        sender: str,
        text: str,
        event_id: str = "",
        before: int | None = None,
        pending: list[Turn] | None = None,
        thread: str = "",
    ) -> AgentRequest:
        """The request answering `text` after the room's turns, trimmed to the agent's limit:
        all of them, or those before turn `before` (a retry), or those before the turn of
        `event_id` when a restart answers that message again.

        Trimmed turns are deleted, so that the stored context is what the agent saw.
        """
        turns = await self.conversation_turns(room, thread)
        if before is None and event_id:
            before = next((t.id for t in turns if t.event_id == event_id and t.id != SEED), None)
        earlier = turns if before is None else [t for t in turns if t.id < before]
        # Answers still being shown and written down belong to the context already.
        earlier += _unstored(room.room_id, pending or [])
        # The current message's turn is written with its answer, after the agent's reply.
        current = TurnRow(before or UNSTORED, room.room_id, event_id, USER, text, False, 0)
        memory = await self.memory_for(room, sender)
        system = system_prompt(agent, memory)
        kept, tokens = trim([*earlier, current], estimate_tokens(system), agent.max_context_tokens)
        if len(kept) < len(earlier) + 1 and kept[0].id != SEED:
            await self.store.turns.delete_before(room.room_id, kept[0].id, thread)
        return AgentRequest(
            agent=agent,
            chat_id=chat_id_of(room, thread),
            room_id=room.room_id,
            sender=sender,
            event_id=event_id,
            text=current.content,
            system_prompt=system,
            memory=tuple(memory),
            history=tuple(
                Turn(t.role, t.content, t.sender, refs.from_json(t.attachments)) for t in kept[:-1]
            ),
            context_tokens=tokens,
            shared=bool(room.collaborators),
        )

    async def summary(
        self, room: RoomRow, agent: AgentSettings, thread: str = ""
    ) -> ContextSummary:
        turns = await self.conversation_turns(room, thread)
        memory = await self.memory_for(room)
        fixed = estimate_tokens(system_prompt(agent, memory))
        return ContextSummary(
            turns=len(turns),
            unanswered=sum(1 for t in turns if t.role == USER and not t.answered),
            tokens=fixed + sum(estimate_tokens(t.content) for t in turns),
            limit=agent.max_context_tokens,
            chat_id=chat_id_of(room, thread),
            share_memory=room.share_memory,
            memory_entries=len(memory),
        )

    async def start_new(
        self, room: RoomRow, context_start: str, summary: str = "", thread: str = ""
    ) -> str:
        """Mints a chat id and empties the history: the binding in Matrix first, then the DB.
        The room's new context starts its threads anew too; a thread's, that thread alone.

        With a summary, the new context opens with it. Returns the new chat id.
        """

        async def reset_turns(tx: Store) -> None:
            if thread:
                await tx.turns.clear_thread(room.room_id, thread)
            else:
                await tx.turns.clear(room.room_id)
            if summary:
                await tx.turns.add_answered(
                    room.room_id, [NewTurn(None, SUMMARY, SUMMARY_PREFIX + summary)], thread
                )

        if thread:
            starts = with_start(room.thread_starts, thread, context_start)
            changed = await self.bindings.change(room, also=reset_turns, thread_starts=starts)
            return chat_id_of(changed, thread)
        chat_id = new_chat_id()
        await self.bindings.change(
            room, also=reset_turns, chat_id=chat_id, context_start=context_start, thread_starts={}
        )
        return chat_id

    async def set_share(self, room: RoomRow, share: bool) -> None:
        await self.bindings.change(room, share_memory=share)


def _unstored(room_id: str, pending: list[Turn]) -> list[TurnRow]:
    """Rows for turns not written down yet, numbered below the stored ones' ids."""
    first = UNSTORED - len(pending)
    return [
        TurnRow(
            first + n,
            room_id,
            None,
            turn.role,
            turn.content,
            True,
            0,
            sender=turn.sender,
            attachments=refs.to_json(turn.attachments),
        )
        for n, turn in enumerate(pending)
    ]
