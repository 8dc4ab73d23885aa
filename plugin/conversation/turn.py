"""The turn: answering one queued job (a message, a retry, a regeneration, a compaction or a
shared room's note) in its conversation.

A message moves through its delivery state here (see `delivery`): answering once it is taken,
answered once its final answer, or a final notice, is in Matrix. A crash anywhere leaves a state
that the next start completes (see `startup.catchup`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from functools import partial
from logging import Logger

from attrs import define
from mautrix.errors import MatrixError

from ..agents.base import BackendError, Turn
from ..db import Store
from ..db.rows import ACTIVE, RoomRow
from ..matrix.outbox import Outbox
from ..matrix.replies import ReplyTarget
from ..media import refs
from ..ops import access
from ..ops.metrics import Metrics
from ..ops.settings import AgentSettings, Settings
from .compaction import Compaction, agent_failed
from .context import ASSISTANT, USER, ContextManager, estimate_tokens
from .controls import STOPPED_NOTE, CallControl, RunningAnswers
from .delivery import Delivery, reopened
from .matrix_retry import MatrixRetry
from .media_in import MediaIn, MediaProblem
from .media_out import Answer, MediaOut
from .pipeline import ShowChain
from .queues import COMPACT, MESSAGE, NOTE, REGENERATE, RETRY, Job
from .quota import Quota
from .refusals import Refusals
from .stream import ReplyStream


def used_tokens(control: CallControl, request_tokens: int, text: str) -> int:
    """The server's own count where it gave one; estimated otherwise."""
    if control.usage is not None:
        return control.usage.total
    return request_tokens + estimate_tokens(text)


def failure_notice(
    agent: AgentSettings, error: BackendError | MediaProblem, settings: Settings
) -> str:
    """Why the agent did not answer: it failed, or a file of the message could not go to it."""
    kept = f"Your message is kept; send `!{settings.command_prefix} retry` to try again."
    if isinstance(error, BackendError):
        return f"⚠️ {agent.name} failed: {error.describe()}. {kept}"
    return f"⚠️ {error} {kept}"


@define(eq=False)
class TurnRunner:
    store: Store
    context: ContextManager
    quota: Quota
    refusals: Refusals
    delivery: Delivery
    compaction: Compaction
    chain: ShowChain
    running: RunningAnswers
    media_in: MediaIn
    media_out: MediaOut
    outbox: Outbox
    matrix_retry: MatrixRetry
    metrics: Metrics
    settings: Callable[[], Settings]
    log: Logger

    async def run(self, job: Job) -> None:
        await self.matrix_retry.run(job, partial(self._run_once, job))

    async def failed(self, job: Job, error: Exception) -> None:
        self.metrics.error("dispatch", f"{job.kind} in {job.room_id}: {type(error).__name__}")
        prefix = self.settings().command_prefix
        try:
            await self.outbox.reply(
                ReplyTarget.of(job.event),
                f"⚠️ Something went wrong while handling this. Your message is kept; send "
                f"`!{prefix} retry` to try again.",
            )
            room = await self.store.rooms.get(job.room_id)
            if room is None:
                await self.delivery.settled(job)
            else:
                # Kept in the context unanswered, as the notice says: `retry` answers it.
                await self.delivery.kept(job, room)
        except Exception as e:
            self.log.warning(f"Could not tell {job.room_id} about the failure: {e}")

    async def stop(self) -> None:
        await self.chain.stop()

    def busy(self) -> bool:
        return self.chain.busy()

    async def _run_once(self, job: Job) -> None:
        room = await self.store.rooms.get(job.room_id)
        settings = self.settings()
        if job.kind not in (MESSAGE, NOTE):
            # A retry, a regeneration or a compaction works on the context as written down.
            await self.chain.settle(job.key)
        if room is None or room.state != ACTIVE:
            # The room is not managed any more: nothing can be answered there.
            await self.delivery.settled(job)
        elif job.kind == MESSAGE:
            await self._answer_message(job, room, settings)
        elif job.kind == NOTE:
            # Written after the answers before it, as the context's next turn.
            note = [Turn(USER, job.text, job.sender, tuple(job.attachments))]
            self.chain.then(job.key, partial(self.delivery.noted, job, room), note)
        elif job.kind == RETRY:
            await self._answer_retry(job, room, settings)
        elif job.kind == REGENERATE:
            self.delivery.answering(job.reply_to)
            target = ReplyTarget.of(job.event)
            await self._answer(job, room, target, settings, job.reply_to)
        elif job.kind == COMPACT:
            await self.compaction.run(job, room, settings)

    async def _answer_message(self, job: Job, room: RoomRow, settings: Settings) -> None:
        target = ReplyTarget.of(job.event)
        allowed = access.is_allowed(settings, room.owner)
        if not allowed or job.over_quota:
            # A notice comes after the answers before it.
            await self.chain.settle(job.key)
        if not allowed:
            await self.refusals.revoked(target, room.owner)
        elif job.over_quota:
            await self.refusals.over_minute(target, settings.messages_per_minute)
        else:
            self.delivery.answering(job.event.event_id)
            await self._answer(job, room, target, settings)
            return
        await self.delivery.settled(job)

    async def _answer_retry(self, job: Job, room: RoomRow, settings: Settings) -> None:
        turn = await reopened(self.store, room.room_id, job.turn_id, job.thread)
        if turn is None:
            await self.outbox.reply(
                ReplyTarget.of(job.event), "That message is no longer in the context."
            )
            return
        job.text = turn.content
        job.attachments = list(refs.from_json(turn.attachments))
        target = ReplyTarget.of(job.event, turn.event_id or job.event.event_id)
        await self._answer(job, room, target, settings, turn.event_id or "")

    async def _answer(
        self,
        job: Job,
        room: RoomRow,
        target: ReplyTarget,
        settings: Settings,
        event_id: str | None = None,
    ) -> None:
        agent = settings.agents.get(room.agent_id)
        if settings.daily_tokens > 0:
            # The allowance counts what the answers before used: they are written down first.
            await self.chain.settle(job.key)
        if agent is None or await self.quota.tokens_exhausted(job.sender):
            await self.chain.settle(job.key)
            # The agent is not configured any more, or the day's tokens are used: a notice,
            # and the message kept for a retry.
            await self.refusals.not_answered(target, room.agent_id, settings)
            await self.delivery.kept(job, room)
            return
        stream = ReplyStream(
            self.outbox, target, settings, resume=job.resume, after=self.chain.last(job.key)
        )
        stream.start()
        try:
            answer, control = await self._call(job, room, agent, settings, stream, event_id)
        except (BackendError, MediaProblem) as e:
            if isinstance(e, BackendError):
                agent_failed(self.metrics, self.log, agent, room.room_id, e)
            notice = failure_notice(agent, e, settings)
            show_failure = partial(self._show_failure, job, room, stream, notice)
            self.chain.then(job.key, show_failure, [], stream.close)
            return
        except BaseException:
            # A Matrix failure, or a stop: what was shown is taken over by the next try.
            job.resume = stream.part_ids()
            # The stream's own Matrix error is the one raised here already, or moot in a stop.
            with suppress(MatrixError):
                await stream.close()
            raise
        tokens = used_tokens(control, answer.tokens, answer.text)
        self.metrics.tokens(agent.id, tokens)
        asked = Turn(USER, job.text, job.sender, tuple(job.attachments))
        exchange = [asked, Turn(ASSISTANT, answer.text)]
        show = partial(self._show_answer, job, room, stream, answer, tokens)
        # A regenerated answer replaces one in the middle of the context: nothing new follows.
        self.chain.then(job.key, show, [] if job.kind == REGENERATE else exchange, stream.close)

    async def _call(
        self,
        job: Job,
        room: RoomRow,
        agent: AgentSettings,
        settings: Settings,
        stream: ReplyStream,
        event_id: str | None,
    ) -> tuple[Answer, CallControl]:
        """The agent's answer, streamed as it comes; a stop (by reaction) ends it with a note."""
        target = stream.target
        # The message's files become text or go along (`media_in`, `media_out`).
        await self.media_in.prepare(job, agent, settings, target, self.chain.last(job.key))
        request = await self.context.request_for(
            room,
            agent,
            job.sender,
            job.text,
            job.event.event_id if event_id is None else event_id,
            before=job.turn_id,
            pending=self.chain.pending_turns(job.key),
            thread=job.thread,
        )
        with self.running.running(target.event_id, stream) as control:
            answer = await self.media_out.answer(
                job, agent, request, room, settings, stream, control
            )
        if control.stopped:
            answer.text += STOPPED_NOTE
            stream.add(STOPPED_NOTE)
        return answer, control

    async def _show_answer(
        self, job: Job, room: RoomRow, stream: ReplyStream, answer: Answer, tokens: int
    ) -> None:
        """The answer's files and last edit, then the answer written down, after the room's
        previous answer; Matrix failures are waited out, and past that, the next start answers
        it."""
        if await self.matrix_retry.run(job, partial(self.media_out.show, job, stream, answer)):
            await self.delivery.answered(
                job, room, answer.text, answer.newest, tokens, answer.file_refs()
            )

    async def _show_failure(
        self, job: Job, room: RoomRow, stream: ReplyStream, notice: str
    ) -> None:
        if await self.matrix_retry.run(job, partial(stream.fail, notice)):
            await self.delivery.kept(job, room)
