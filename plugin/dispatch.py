"""Routes the owner's messages to the room's agent and streams the answers back.

Each working room has a FIFO of jobs drained by one task, so a room is answered in order, one
message at a time. Rooms drain in parallel; a global limit caps how many agent calls run at once.
Every user event is claimed in the DB before it is queued, so that it is answered once, even when
the live handler and the startup catch-up both see it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from html import escape
from typing import Any

import aiohttp
from attrs import define
from mautrix.errors import MatrixRequestError
from mautrix.types import MessageEvent, MessageType
from mautrix.util import markdown

from . import access
from .backends import backend_for
from .backends.base import (
    AgentRequest,
    BackendBadResponse,
    BackendDisconnected,
    BackendError,
    BackendTimeout,
)
from .commands import UsageError
from .config import AgentSettings, Settings
from .context import ASSISTANT, COMPACT_PROMPT, USER, ContextManager, estimate_tokens
from .db import ACTIVE, RoomRow, Store, TurnRow
from .matrix_send import MatrixSender, RateLimited
from .matrix_state import STREAMING_KEY
from .metrics import Metrics
from .quota import Quota

# Plain strings: the content dicts go to json.dumps as they are.
TEXT = "m.text"
NOTICE = "m.notice"
MESSAGE = "message"
RETRY = "retry"
COMPACT = "compact"
TYPING_TIMEOUT_MS = 30_000
TYPING_REFRESH = 20.0
# Tries of one Matrix send that the homeserver rate-limits, and the wait when it names none.
MATRIX_SEND_TRIES = 8
DEFAULT_MATRIX_RETRY_MS = 1000
MAX_MATRIX_RETRY_MS = 60_000


@define
class Job:
    kind: str
    room_id: str
    # The event the bot's answer relates to: the user's message, or the command.
    event: MessageEvent
    sender: str
    text: str = ""
    # The user turn a retry answers again.
    turn_id: int | None = None
    # The per-minute limit was exceeded when the message arrived.
    over_quota: bool = False
    # The room has seen the outcome (answer or notice); only bookkeeping remains.
    shown: bool = False


@define
class ReplyTarget:
    """Where an answer goes: a reply to `event_id`, in the thread `thread_root` if any."""

    room_id: str
    event_id: str
    thread_root: str | None = None

    @classmethod
    def of(cls, evt: MessageEvent, event_id: str | None = None) -> ReplyTarget:
        content = evt.content
        thread = content.get_thread_parent() if hasattr(content, "get_thread_parent") else None
        return cls(evt.room_id, event_id or evt.event_id, thread)

    def relation(self) -> dict[str, Any]:
        reply = {"event_id": self.event_id}
        if self.thread_root:
            return {
                "rel_type": "m.thread",
                "event_id": self.thread_root,
                "is_falling_back": False,
                "m.in_reply_to": reply,
            }
        return {"m.in_reply_to": reply}


def message_text(evt: MessageEvent) -> str:
    """The message without the quoted reply fallback that some clients prepend."""
    body = evt.content.body or ""
    if evt.content.get_reply_to() and body.startswith(("> <", "> * <")) and "\n" in body:
        lines = body.split("\n")
        while lines and lines[0].startswith("> "):
            lines.pop(0)
        body = "\n".join(lines)
    return body.strip()


def render(text: str, msgtype: str, streaming: bool) -> dict[str, Any]:
    content: dict[str, Any] = {"msgtype": msgtype, "body": text}
    html = markdown.render(text).strip()
    if html != f"<p>{escape(text, quote=False)}</p>":
        content["format"] = "org.matrix.custom.html"
        content["formatted_body"] = html
    if streaming:
        content[STREAMING_KEY] = True
    return content


def edit_content(original: str, new: dict[str, Any]) -> dict[str, Any]:
    content = {k: v for k, v in new.items() if k != "formatted_body"}
    content["body"] = f"* {new['body']}"
    if "formatted_body" in new:
        content["formatted_body"] = f"* {new['formatted_body']}"
    content["m.new_content"] = new
    content["m.relates_to"] = {"rel_type": "m.replace", "event_id": original}
    return content


class _Limiter:
    """A semaphore whose size is read from the live settings, so a config change applies."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self._active = 0
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._active < self._limit())
            self._active += 1

    async def __aexit__(self, *_: object) -> None:
        async with self._changed:
            self._active -= 1
            self._changed.notify()


class ReplyStream:
    """One streamed answer: a first message, edits at most every `interval`, a final edit."""

    def __init__(self, dispatcher: Dispatcher, target: ReplyTarget, settings: Settings) -> None:
        self.dispatcher = dispatcher
        self.target = target
        self.interval = settings.edit_interval
        self.max_edits = settings.max_edits
        self.text = ""
        self.deltas = 0
        self.event_id: str | None = None
        self.edits = 0
        self.started = time.monotonic()
        self.last_sent = 0.0

    async def add(self, delta: str) -> None:
        self.text += delta
        self.deltas += 1
        now = time.monotonic()
        # A reply that arrives whole, or within one interval, is one message without edits.
        if self.event_id is None:
            if self.deltas > 1 and now - self.started >= self.interval and self.text.strip():
                await self._send(self.text, TEXT, streaming=True)
        elif self.edits < self.max_edits and now - self.last_sent >= self.interval:
            self.edits += 1
            await self._send(self.text, TEXT, streaming=True)

    async def finish(self) -> None:
        await self._send(self.text, TEXT, streaming=False)

    async def fail(self, notice: str) -> None:
        """Tells the room; a partly streamed reply is closed with the notice under it."""
        if self.event_id is not None:
            await self._send(f"{self.text}\n\n---\n{notice}", TEXT, streaming=False)
        else:
            await self._send(notice, NOTICE, streaming=False)

    async def _send(self, text: str, msgtype: str, streaming: bool) -> None:
        content = render(text, msgtype, streaming)
        self.last_sent = time.monotonic()
        if self.event_id is None:
            content["m.relates_to"] = self.target.relation()
            self.event_id = await self.dispatcher.send(self.target.room_id, content)
        else:
            await self.dispatcher.send(self.target.room_id, edit_content(self.event_id, content))


def is_agent_message(evt: MessageEvent, room: RoomRow, settings: Settings) -> bool:
    """A text message for the room's agent: from its owner or an admin, no command, no edit.

    The live handler and the startup catch-up both decide with this, so they agree.
    """
    content = evt.content
    if content.msgtype != MessageType.TEXT or content.get_edit():
        return False
    words = (content.body or "").split(maxsplit=1)
    if words and words[0] == f"!{settings.command_prefix}":
        return False
    return room.state == ACTIVE and access.may_act_in_room(settings, room.owner, evt.sender)


class Dispatcher:
    def __init__(
        self,
        *,
        client: Any,
        store: Store,
        context: ContextManager,
        quota: Quota,
        metrics: Metrics,
        settings: Callable[[], Settings],
        http: aiohttp.ClientSession,
        log: logging.Logger,
        sender: MatrixSender | None = None,
    ) -> None:
        self.client = client
        self.sender = sender or MatrixSender(client)
        self.store = store
        self.context = context
        self.quota = quota
        self.metrics = metrics
        self.settings = settings
        self.http = http
        self.log = log
        self._queues: dict[str, deque[Job]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._intake: dict[str, asyncio.Lock] = {}
        self._limiter = _Limiter(lambda: self.settings().max_concurrency)
        self._running = False

    # Lifecycle

    def start(self) -> None:
        self._running = True

    async def stop(self) -> None:
        """Stops the workers. Messages not answered yet are unclaimed for the next catch-up."""
        self._running = False
        workers = list(self._workers.values())
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        unanswered = [
            job for queue in self._queues.values() for job in queue if job.kind == MESSAGE
        ]
        self._queues.clear()
        for job in unanswered:
            try:
                await self.store.unclaim_event(job.event.event_id)
            except Exception:
                self.log.exception(f"Could not unclaim {job.event.event_id}")

    def queue_depth(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    # Intake

    async def on_message(self, evt: MessageEvent) -> None:
        """The live handler: queues the owner's text messages in working rooms."""
        # The room's lock is the first thing awaited, so that messages keep their arrival order
        # through the checks below.
        async with self._intake.setdefault(evt.room_id, asyncio.Lock()):
            if await self.accepts(evt):
                await self._submit(evt)

    async def accepts(self, evt: MessageEvent) -> bool:
        """Whether an event is a message for the room's agent."""
        if evt.sender == self.client.mxid:
            return False
        room = await self.store.get_room(evt.room_id)
        return room is not None and is_agent_message(evt, room, self.settings())

    async def submit(self, evt: MessageEvent) -> bool:
        """Claims an event and queues it on its room's FIFO. False if it was already handled."""
        async with self._intake.setdefault(evt.room_id, asyncio.Lock()):
            return await self._submit(evt)

    async def _submit(self, evt: MessageEvent) -> bool:
        if not self._running:
            # Before start or after stop nothing is claimed: the catch-up answers it later.
            return False
        if not await self.store.claim_event(evt.event_id, evt.room_id):
            return False
        self.metrics.message_in()
        self._enqueue(
            Job(
                MESSAGE,
                evt.room_id,
                evt,
                evt.sender,
                text=message_text(evt),
                over_quota=not self.quota.admit_message(evt.sender),
            )
        )
        return True

    async def retry(self, room: RoomRow, evt: MessageEvent) -> None:
        """Queues the last unanswered user turn again, or the last one if all have answers."""
        if any(not job.shown for job in self._queues.get(room.room_id, ())):
            raise UsageError(
                "An answer is still on its way in this room: retry once it has arrived."
            )
        user_turns = [t for t in await self.store.turns(room.room_id) if t.role == USER]
        if not user_turns:
            raise UsageError("Nothing to retry: this room's context has no message yet.")
        unanswered = [t for t in user_turns if not t.answered]
        turn = (unanswered or user_turns)[-1]
        self._enqueue(Job(RETRY, room.room_id, evt, evt.sender, turn_id=turn.id))

    async def compact(self, room: RoomRow, evt: MessageEvent) -> None:
        """Queues a compaction, so that it waits for the answers already on their way."""
        if not await self.store.has_turns(room.room_id):
            raise UsageError("Nothing to compact: this room's context is empty.")
        self._enqueue(Job(COMPACT, room.room_id, evt, evt.sender))

    def _enqueue(self, job: Job) -> None:
        self._queues.setdefault(job.room_id, deque()).append(job)
        if job.room_id not in self._workers:
            self._workers[job.room_id] = asyncio.create_task(self._drain(job.room_id))

    async def _drain(self, room_id: str) -> None:
        queue = self._queues[room_id]
        try:
            while queue:
                job = queue[0]
                try:
                    await self._run(job)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    self.log.exception(f"Failed to handle {job.kind} {job.event.event_id}")
                    self.metrics.error("dispatch", f"{job.kind} in {room_id}: {type(e).__name__}")
                    await self._unexpected_failure(job)
                queue.popleft()
        finally:
            self._workers.pop(room_id, None)
            if not queue:
                self._queues.pop(room_id, None)

    # Jobs

    async def _run(self, job: Job) -> None:
        try:
            room = await self.store.get_room(job.room_id)
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

    async def _advance_cursor(self, job: Job) -> None:
        await self.store.set_room_cursor(job.room_id, job.event.event_id, job.event.timestamp)

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
        turn = next((t for t in await self.store.turns(room.room_id) if t.id == job.turn_id), None)
        if turn is None:
            # A clear or a trim removed it while the retry waited.
            await self._notice(
                ReplyTarget.of(job.event), "That message is no longer in the context."
            )
            return
        if turn.answered:
            # Answering the last message again replaces its answer in the context.
            await self.store.delete_turns_after(room.room_id, turn.id)
            await self.store.set_turn_answered(turn.id, False)
        target = ReplyTarget.of(job.event, turn.event_id or job.event.event_id)
        await self._answer(job, room, turn, target, settings)

    async def _answer(
        self, job: Job, room: RoomRow, turn: TurnRow, target: ReplyTarget, settings: Settings
    ) -> None:
        agent = settings.agents.get(room.agent_id)
        prefix = settings.command_prefix
        if agent is None:
            await self._notice(
                target,
                f"This room's agent `{room.agent_id}` is not configured any more, so your message "
                f"did not go to an agent. It is kept: once an admin adds the agent back, "
                f"send `!{prefix} retry`.",
            )
            return
        if await self.quota.tokens_exhausted(room.owner):
            await self._quota_notice(
                target,
                room.owner,
                "day",
                f"You used today's allowance of {settings.daily_tokens} tokens, so this message "
                f"did not go to the agent. It is kept: send `!{prefix} retry` tomorrow (UTC).",
            )
            return
        request = await self.context.request_for(room, agent, turn, job.sender)
        stream = ReplyStream(self, target, settings)
        try:
            text = await self._call(agent, request, settings, stream.add)
            await stream.finish()
            job.shown = True
        except BackendError as e:
            self._failed(agent, room.room_id, e)
            await stream.fail(
                f"⚠️ {agent.name} failed: {e.describe()}. Your message is kept; "
                f"send `!{prefix} retry` to try again."
            )
            job.shown = True
            return
        except MatrixRequestError as e:
            # The answer could not be shown, so the turn stays unanswered for a retry.
            self.log.warning(f"Could not send the answer in {room.room_id}: {e}")
            self.metrics.error("matrix_send", f"answer in {room.room_id}: {type(e).__name__}")
            return
        await self.store.add_turns(room.room_id, [(None, ASSISTANT, text)])
        await self.store.set_turn_answered(turn.id, True)
        await self.quota.record(room.owner, request.context_tokens + estimate_tokens(text))

    async def _compact(self, job: Job, room: RoomRow, settings: Settings) -> None:
        target = ReplyTarget.of(job.event)
        agent = settings.agents.get(room.agent_id)
        turns = await self.store.turns(room.room_id)
        if agent is None or not turns:
            await self._notice(target, "Nothing to compact.")
            return
        request = await self.context.request_for(
            room, agent, turns[-1], job.sender, text=COMPACT_PROMPT
        )
        try:
            summary = await self._call(agent, request, settings, None)
        except BackendError as e:
            self._failed(agent, room.room_id, e)
            await self._notice(
                target,
                f"⚠️ The context was not compacted because {agent.name} failed: {e.describe()}. "
                f"It is unchanged; send "
                f"`!{settings.command_prefix} context compact` to try again.",
            )
            return
        chat_id = await self.context.start_new(room, job.event.event_id, summary)
        await self._notice(
            target,
            f"Context compacted: {len(turns)} turns became this summary, the first turn of a new "
            f"context (chat `{chat_id[:8]}`).\n\n{summary}",
        )

    # Agent calls

    async def _call(
        self,
        agent: AgentSettings,
        request: AgentRequest,
        settings: Settings,
        on_delta: Callable[[str], Awaitable[None]] | None,
    ) -> str:
        """Runs one agent call under the global limit, with typing shown; returns the text."""
        parts: list[str] = []

        async def consume() -> None:
            try:
                async for delta in backend_for(agent, self.http).reply(request):
                    parts.append(delta)
                    if on_delta is not None:
                        await on_delta(delta)
            except aiohttp.ClientError as e:
                # Raised while the answer is read, e.g. when the agent's server disconnects.
                raise BackendDisconnected() from e

        async with self._limiter:
            typing = asyncio.create_task(self._keep_typing(request.room_id))
            started = time.monotonic()
            try:
                await asyncio.wait_for(consume(), settings.timeout)
            except asyncio.TimeoutError as e:
                raise BackendTimeout(settings.timeout) from e
            finally:
                typing.cancel()
                await self._stop_typing(request.room_id)
        text = "".join(parts)
        if not text.strip():
            raise BackendBadResponse("the reply was empty")
        self.metrics.reply(agent.id, time.monotonic() - started)
        return text

    def _failed(self, agent: AgentSettings, room_id: str, error: BackendError) -> None:
        self.log.warning(f"Agent {agent.id} failed in {room_id}: {error.describe()}")
        self.metrics.error(f"backend_{error.kind}", error.describe(), agent_id=agent.id)

    async def _keep_typing(self, room_id: str) -> None:
        while True:
            try:
                await self.client.set_typing(room_id, TYPING_TIMEOUT_MS)
            except MatrixRequestError as e:
                self.log.debug(f"Typing notification failed in {room_id}: {e}")
            await asyncio.sleep(TYPING_REFRESH)

    async def _stop_typing(self, room_id: str) -> None:
        try:
            await self.client.set_typing(room_id, 0)
        except MatrixRequestError as e:
            self.log.debug(f"Typing notification failed in {room_id}: {e}")

    # Matrix

    async def send(self, room_id: str, content: dict[str, Any]) -> str:
        """Sends one message event, waiting out the homeserver's rate limit as it asks."""
        for attempt in range(1, MATRIX_SEND_TRIES + 1):
            try:
                event_id = await self.sender.send(room_id, content)
            except RateLimited as e:
                if attempt == MATRIX_SEND_TRIES:
                    raise
                wait_ms = _retry_after_ms(e, attempt)
                self.log.info(f"Rate limited sending to {room_id}; retrying in {wait_ms} ms")
                await asyncio.sleep(wait_ms / 1000)
                continue
            if "m.new_content" not in content:
                self.metrics.message_out()
            return event_id
        raise AssertionError("unreachable")

    async def _notice(self, target: ReplyTarget, text: str) -> None:
        content = render(text, NOTICE, streaming=False)
        content["m.relates_to"] = target.relation()
        await self.send(target.room_id, content)

    async def _unexpected_failure(self, job: Job) -> None:
        prefix = self.settings().command_prefix
        try:
            await self._notice(
                ReplyTarget.of(job.event),
                f"⚠️ Something went wrong while handling this. Your message is kept; send "
                f"`!{prefix} retry` to try again.",
            )
        except Exception as e:
            self.log.warning(f"Could not tell {job.room_id} about the failure: {e}")

    async def _quota_notice(self, target: ReplyTarget, user_id: str, kind: str, text: str) -> None:
        self.metrics.error("quota", f"{kind} limit reached")
        if self.quota.should_notify(user_id, kind):
            await self._notice(target, text)


def _retry_after_ms(error: RateLimited, attempt: int) -> int:
    # The homeserver's own wait when it names one (see matrix_send), else a growing wait.
    value = error.retry_after_ms
    if value is not None and value >= 0:
        return int(min(value, MAX_MATRIX_RETRY_MS))
    return min(DEFAULT_MATRIX_RETRY_MS * 2 ** (attempt - 1), MAX_MATRIX_RETRY_MS)
