"""The turn: answering one queued job (a message, a retry or a compaction) in its room.

A message moves through its delivery state here: answering once its turn is taken, answered
once its final answer (or a final notice) is in Matrix, in the same transaction as the answer's
turn. A crash anywhere leaves a state the next start completes (see `startup.catchup`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from logging import Logger

from attrs import define
from mautrix.errors import MatrixError

from ..agents.base import BackendError
from ..db import Store
from ..db.rows import ACTIVE, ANSWERED, ANSWERING, RoomRow, TurnRow, now_ms
from ..matrix.outbox import Outbox
from ..matrix.replies import ReplyTarget
from ..ops import access
from ..ops.metrics import Metrics
from ..ops.settings import AgentSettings, Settings
from .agent_call import AgentCaller
from .context import ASSISTANT, COMPACT_PROMPT, USER, ContextManager, estimate_tokens
from .queues import COMPACT, MESSAGE, RETRY, Job
from .quota import Quota, today
from .refusals import Refusals, these
from .stream import ReplyStream

# When Matrix fails while a message is answered, it is tried again after these waits; after
# that it stays unanswered in the delivery state, and the next start answers it.
MATRIX_RETRY_WAITS = (2.0, 10.0)


@define(eq=False)
class TurnRunner:
    store: Store
    context: ContextManager
    quota: Quota
    caller: AgentCaller
    refusals: Refusals
    outbox: Outbox
    metrics: Metrics
    settings: Callable[[], Settings]
    log: Logger

    async def run(self, job: Job) -> None:
        for wait in (*MATRIX_RETRY_WAITS, None):
            try:
                await self._run_once(job)
                return
            except MatrixError as e:
                if wait is None:
                    await self._gave_up(job, e)
                    return
                self.log.warning(f"Matrix failed in {job.room_id} ({e}); trying again in {wait} s")
                await asyncio.sleep(wait)

    async def _gave_up(self, job: Job, error: MatrixError) -> None:
        if job.kind == MESSAGE:
            self.log.error(
                f"Matrix kept failing while answering {job.event.event_id} in {job.room_id} "
                f"({error}); it stays unanswered, and the next start answers it"
            )
            return
        self.log.error(f"Matrix kept failing on {job.kind} in {job.room_id}: {error}")
        try:
            await self.outbox.reply(
                ReplyTarget.of(job.event),
                f"⚠️ The homeserver failed, so this did not finish ({error}). Nothing was "
                "changed; send the command again later.",
            )
        except MatrixError as e:
            self.log.warning(f"Could not tell {job.room_id} either: {e}")

    async def failed(self, job: Job, error: Exception) -> None:
        self.metrics.error("dispatch", f"{job.kind} in {job.room_id}: {type(error).__name__}")
        prefix = self.settings().command_prefix
        try:
            await self.outbox.reply(
                ReplyTarget.of(job.event),
                f"⚠️ Something went wrong while handling this. Your message is kept; send "
                f"`!{prefix} retry` to try again.",
            )
            await self._settle(job)
        except Exception as e:
            self.log.warning(f"Could not tell {job.room_id} about the failure: {e}")

    async def _run_once(self, job: Job) -> None:
        room = await self.store.rooms.get(job.room_id)
        settings = self.settings()
        if room is None or room.state != ACTIVE:
            # The room is not managed any more: nothing can be answered there.
            await self._settle(job)
        elif job.kind == MESSAGE:
            await self._answer_message(job, room, settings)
        elif job.kind == RETRY:
            await self._answer_retry(job, room, settings)
        elif job.kind == COMPACT:
            await self._compact(job, room, settings)

    async def _settle(self, job: Job) -> None:
        """The message is answered: a notice said why it did not go to the agent."""
        if job.kind == MESSAGE:
            await self.store.messages.set_state(job.event.event_id, ANSWERED)

    async def _answer_message(self, job: Job, room: RoomRow, settings: Settings) -> None:
        target = ReplyTarget.of(job.event)
        if not access.is_allowed(settings, room.owner):
            await self.refusals.revoked(target, room.owner)
        elif job.over_quota:
            limit = settings.messages_per_minute
            await self.refusals.refuse(
                target,
                "minute",
                lambda n: (
                    f"You sent more than {limit} messages in a minute, so {these(n)} "
                    "did not go to the agent. Wait a moment and send it again."
                ),
            )
        else:
            await self._answer(job, room, await self._take_turn(job), target, settings)
            return
        await self._settle(job)

    async def _take_turn(self, job: Job) -> TurnRow:
        """The message is being answered: its turn enters the context (once: a message answered
        again after a restart has one already), and its state says so. No transaction: a crash
        between the two leaves a turn that the next try takes over."""
        event_id, room_id = job.event.event_id, job.room_id
        turn = None if job.fresh else await self.store.turns.for_event(room_id, event_id)
        if turn is None:
            turn = await self.store.turns.add_pending(room_id, event_id, USER, job.text)
        await self.store.messages.set_state(event_id, ANSWERING)
        return turn

    async def _answer_retry(self, job: Job, room: RoomRow, settings: Settings) -> None:
        turns = await self.store.turns.of_room(room.room_id)
        turn = next((t for t in turns if t.id == job.turn_id), None)
        if turn is None:
            # A clear or a trim removed it while the retry waited.
            await self.outbox.reply(
                ReplyTarget.of(job.event), "That message is no longer in the context."
            )
            return
        if turn.answered:
            # Answering the last message again replaces its answer in the context.
            async with self.store.transaction() as tx:
                await tx.turns.delete_after(room.room_id, turn.id)
                await tx.turns.set_answered(turn.id, False)
        target = ReplyTarget.of(job.event, turn.event_id or job.event.event_id)
        await self._answer(job, room, turn, target, settings)

    async def _answer(
        self, job: Job, room: RoomRow, turn: TurnRow, target: ReplyTarget, settings: Settings
    ) -> None:
        agent = await self._agent_or_notice(room, target, settings)
        if agent is None:
            await self._settle(job)
            return
        if await self.quota.tokens_exhausted(room.owner):
            limit, prefix = settings.daily_tokens, settings.command_prefix
            await self.refusals.refuse(
                target,
                "day",
                lambda n: (
                    f"You used today's allowance of {limit} tokens, so {these(n)} did not "
                    f"go to the agent. It is kept: send `!{prefix} retry` tomorrow (UTC)."
                ),
            )
            await self._settle(job)
            return
        request = await self.context.request_for(room, agent, turn, job.sender)
        stream = ReplyStream(self.outbox, target, settings, resume=job.resume)
        stream.start()
        try:
            text = await self.caller.call(agent, request, settings, stream)
            await stream.finish()
        except BackendError as e:
            self._failed(agent, room.room_id, e)
            await stream.fail(
                f"⚠️ {agent.name} failed: {e.describe()}. Your message is kept; "
                f"send `!{settings.command_prefix} retry` to try again."
            )
            await self._settle(job)
            return
        except BaseException:
            # A Matrix failure, or a stop: what was shown is taken over by the next try.
            job.resume = stream.part_ids()
            await stream.close()
            raise
        await self._answered(job, room, turn, text, stream, request.context_tokens)

    async def _answered(
        self, job: Job, room: RoomRow, turn: TurnRow, text: str, stream: ReplyStream, used: int
    ) -> None:
        async with self.store.transaction() as tx:
            await tx.turns.add_answered(room.room_id, [(None, ASSISTANT, text)])
            await tx.turns.set_answered(turn.id, True)
            if job.kind == MESSAGE:
                await tx.messages.set_state(job.event.event_id, ANSWERED)
                # The answer is the newest event the bot knows of in the room.
                await tx.rooms.set_cursor(room.room_id, stream.part_ids()[-1], now_ms())
            await tx.usage.add(room.owner, today(), 1, used + estimate_tokens(text))

    async def _agent_or_notice(
        self, room: RoomRow, target: ReplyTarget, settings: Settings
    ) -> AgentSettings | None:
        agent = settings.agents.get(room.agent_id)
        if agent is None:
            await self.outbox.reply(
                target,
                f"This room's agent `{room.agent_id}` is not configured any more, so your message "
                f"did not go to an agent. It is kept: once an admin adds the agent back, "
                f"send `!{settings.command_prefix} retry`.",
            )
        return agent

    async def _compact(self, job: Job, room: RoomRow, settings: Settings) -> None:
        target = ReplyTarget.of(job.event)
        agent = settings.agents.get(room.agent_id)
        turns = await self.store.turns.of_room(room.room_id)
        if agent is None or not turns:
            await self.outbox.reply(target, "Nothing to compact.")
            return
        request = await self.context.request_for(
            room, agent, turns[-1], job.sender, text=COMPACT_PROMPT
        )
        try:
            summary = await self.caller.call(agent, request, settings, None)
        except BackendError as e:
            self._failed(agent, room.room_id, e)
            await self.outbox.reply(
                target,
                f"⚠️ The context was not compacted because {agent.name} failed: {e.describe()}. "
                f"It is unchanged; send "
                f"`!{settings.command_prefix} context compact` to try again.",
            )
            return
        chat_id = await self.context.start_new(room, job.event.event_id, summary)
        await self.outbox.reply(
            target,
            f"Context compacted: {len(turns)} turns became this summary, the first turn of a new "
            f"context (chat `{chat_id[:8]}`).\n\n{summary}",
        )

    def _failed(self, agent: AgentSettings, room_id: str, error: BackendError) -> None:
        self.log.warning(f"Agent {agent.id} failed in {room_id}: {error.describe()}")
        self.metrics.error(f"backend_{error.kind}", error.describe(), agent_id=agent.id)
