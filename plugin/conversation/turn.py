"""The turn: answering one queued job (a message, a retry or a compaction) in its room."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from logging import Logger

from mautrix.errors import MatrixRequestError

from ..agents.base import BackendError
from ..db import Store
from ..db.rows import ACTIVE, RoomRow, TurnRow
from ..matrix.outbox import Outbox
from ..matrix.replies import ReplyTarget
from ..ops.metrics import Metrics
from ..ops.settings import AgentSettings, Settings
from .agent_call import AgentCaller
from .context import ASSISTANT, COMPACT_PROMPT, ContextManager, estimate_tokens
from .queues import COMPACT, MESSAGE, RETRY, Job
from .quota import Quota
from .stream import ReplyStream


class TurnRunner:
    def __init__(
        self,
        store: Store,
        context: ContextManager,
        quota: Quota,
        caller: AgentCaller,
        outbox: Outbox,
        metrics: Metrics,
        settings: Callable[[], Settings],
        log: Logger,
    ) -> None:
        self.store = store
        self.context = context
        self.quota = quota
        self.caller = caller
        self.outbox = outbox
        self.metrics = metrics
        self.settings = settings
        self.log = log

    async def run(self, job: Job) -> None:
        try:
            room = await self.store.rooms.get(job.room_id)
            if room is not None and room.state == ACTIVE:
                settings = self.settings()
                if job.kind == MESSAGE:
                    await self._answer_message(job, room, settings)
                elif job.kind == RETRY:
                    await self._answer_retry(job, room, settings)
                elif job.kind == COMPACT:
                    await self._compact(job, room, settings)
        except asyncio.CancelledError:
            # Stopped mid-way: the cursor stays, so that the catch-up answers it after a restart.
            raise
        except Exception:
            if job.kind == MESSAGE:
                await self._advance_cursor(job)
            raise
        if job.kind == MESSAGE:
            await self._advance_cursor(job)

    async def failed(self, job: Job, error: Exception) -> None:
        self.metrics.error("dispatch", f"{job.kind} in {job.room_id}: {type(error).__name__}")
        prefix = self.settings().command_prefix
        try:
            await self.outbox.reply(
                ReplyTarget.of(job.event),
                f"⚠️ Something went wrong while handling this. Your message is kept; send "
                f"`!{prefix} retry` to try again.",
            )
        except Exception as e:
            self.log.warning(f"Could not tell {job.room_id} about the failure: {e}")

    async def _advance_cursor(self, job: Job) -> None:
        await self.store.rooms.set_cursor(job.room_id, job.event.event_id, job.event.timestamp)

    async def _answer_message(self, job: Job, room: RoomRow, settings: Settings) -> None:
        target = ReplyTarget.of(job.event)
        if job.over_quota:
            await self._quota_notice(
                target,
                job.sender,
                "minute",
                f"You sent more than {settings.messages_per_minute} messages in the last "
                "minute, so this one did not go to the agent. Wait a moment and send it again.",
            )
            return
        turn = await self.context.user_turn(room.room_id, job.event.event_id, job.text)
        await self._answer(job, room, turn, target, settings)

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
            return
        if await self.quota.tokens_exhausted(room.owner):
            await self._quota_notice(
                target,
                room.owner,
                "day",
                f"You used today's allowance of {settings.daily_tokens} tokens, so this message "
                f"did not go to the agent. It is kept: send `!{settings.command_prefix} retry` "
                "tomorrow (UTC).",
            )
            return
        request = await self.context.request_for(room, agent, turn, job.sender)
        stream = ReplyStream(self.outbox, target, settings)
        try:
            text = await self.caller.call(agent, request, settings, stream.add)
            await stream.finish()
            job.shown = True
        except BackendError as e:
            self._failed(agent, room.room_id, e)
            await stream.fail(
                f"⚠️ {agent.name} failed: {e.describe()}. Your message is kept; "
                f"send `!{settings.command_prefix} retry` to try again."
            )
            job.shown = True
            return
        except MatrixRequestError as e:
            # The answer could not be shown, so the turn stays unanswered for a retry.
            self.log.warning(f"Could not send the answer in {room.room_id}: {e}")
            self.metrics.error("matrix_send", f"answer in {room.room_id}: {type(e).__name__}")
            return
        async with self.store.transaction() as tx:
            await tx.turns.add_answered(room.room_id, [(None, ASSISTANT, text)])
            await tx.turns.set_answered(turn.id, True)
        await self.quota.record(room.owner, request.context_tokens + estimate_tokens(text))

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

    async def _quota_notice(self, target: ReplyTarget, user_id: str, kind: str, text: str) -> None:
        self.metrics.error("quota", f"{kind} limit reached")
        if self.quota.should_notify(user_id, kind):
            await self.outbox.reply(target, text)
