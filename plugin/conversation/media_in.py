"""A message's files on their way to the agent, in two steps of the turn.

`prepare`, before the context is built: each file is checked against what the agent takes (one
notice names what is wrong, and the message is kept for `!ai retry`); a voice message becomes its
transcript (and the bot replies with what it heard), a text file becomes part of the message.
`loaded`, around the agent call: the bytes of the message's other files, and of the newest images
of the context, are downloaded and sent along. At most `dispatch.max_concurrency` turns hold
downloaded bytes at once, and each file is held once (see `agents.files`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from logging import Logger

import attrs
from attrs import define, field

from ..agents.base import AgentRequest, Turn
from ..agents.files import Attachment
from ..matrix.outbox import Outbox
from ..matrix.replies import ASIDE_KEY, ReplyTarget
from ..media.kinds import OTHER, PDF, PICTURE, TEXT, VOICE, category
from ..media.speech import Speech
from ..media.transfer import Downloads, MediaFailed, TooLarge
from ..ops.settings import AgentSettings, Settings
from .agent_call import Limiter
from .context import USER
from .queues import Job

# Estimated tokens of an image sent again with the context (a high-detail image is 765 and more).
IMAGE_TOKENS = 800
_WHAT = {PICTURE: "see images", PDF: "read PDFs", OTHER: "take files"}


class MediaProblem(Exception):
    """A file that cannot go to the agent: the message says why, for the user."""


def accepts(agent: AgentSettings, kind: str) -> bool:
    """Whether the agent takes files of this category (text and voice become text)."""
    if kind in (TEXT, VOICE) or agent.backend == "http":
        return True
    if agent.backend == "openai":
        return (kind == PICTURE and agent.vision) or (kind == PDF and agent.pdf)
    return False


def refusal(att: Attachment, agent: AgentSettings, settings: Settings) -> str | None:
    kind = category(att)
    if kind == VOICE and settings.media.transcribe is None:
        return (
            "Voice messages are not set up on this bot (an admin can configure "
            "`speech.transcribe`), so this one did not go to the agent."
        )
    if accepts(agent, kind):
        return None
    able = [a.name for a in settings.agents.values() if accepts(a, kind)]
    what = f"cannot take `{att.mimetype}` files" if kind == OTHER else f"cannot {_WHAT[kind]}"
    others = (
        f"Agents that can: {', '.join(able)} (switch with `!{settings.command_prefix} use`)."
        if able
        else "None of the agents here can."
    )
    return f"{agent.name} {what}, so `{att.name}` did not go to it. {others}"


@define(eq=False)
class MediaIn:
    downloads: Downloads
    speech: Speech
    outbox: Outbox
    settings: Callable[[], Settings]
    log: Logger
    _slots: Limiter = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._slots = Limiter(lambda: self.settings().max_concurrency)

    async def prepare(
        self,
        job: Job,
        agent: AgentSettings,
        settings: Settings,
        target: ReplyTarget,
        previous: asyncio.Future[None] | None,
    ) -> None:
        """Makes the message's text from its files, or raises MediaProblem (see above). What
        the bot heard is a reply to `target`, after the room's `previous` answer."""
        pending = [a for a in job.attachments if not a.inlined]
        for att in pending:
            if (problem := refusal(att, agent, settings)) is not None:
                raise MediaProblem(problem)
        if not any(category(a) in (VOICE, TEXT) for a in pending):
            return
        texts, heard, attachments = [job.text], [], []
        async with self._slots:
            for att in job.attachments:
                kind = category(att) if not att.inlined else ""
                if kind == VOICE:
                    heard.append(await self._transcribe(att, settings))
                    texts.append(heard[-1])
                    att = attrs.evolve(att, inlined=True)
                elif kind == TEXT and (text := await self._inline(att, agent, settings)):
                    texts.append(text)
                    att = attrs.evolve(att, inlined=True)
                attachments.append(att)
        job.text = "\n\n".join(t for t in texts if t)
        job.attachments = attachments
        if heard:
            await self._tell_heard(target, heard, previous)

    async def _transcribe(self, att: Attachment, settings: Settings) -> str:
        assert settings.media.transcribe is not None
        data = await self._fetch(att, settings)
        try:
            text = await self.speech.transcribe(
                settings.media.transcribe, data, att.name, att.mimetype
            )
        except MediaFailed as e:
            raise MediaProblem(f"This voice message could not be transcribed: {e}.") from e
        if not text:
            raise MediaProblem("I could not make out any words in this voice message.")
        return text

    async def _inline(
        self, att: Attachment, agent: AgentSettings, settings: Settings
    ) -> str | None:
        """The file as text for the message; None if it goes as a file instead (http agents)."""
        limit = settings.media.inline_text_chars
        text: str | None = None
        try:
            # A character is at most 4 bytes: a longer file is never inlined, nor downloaded whole.
            data = await self.downloads.fetch(att, min(settings.media.max_bytes, 4 * limit + 4))
            text = data.decode("utf-8-sig")
            del data
            too_long = len(text) > limit
        except TooLarge:
            too_long = True
        except UnicodeDecodeError:
            too_long = False
        except MediaFailed as e:
            raise MediaProblem(str(e)) from e
        if text is not None and not too_long:
            return f"--- {att.name} ---\n{text}\n--- end of {att.name} ---"
        if accepts(agent, OTHER):
            return None
        why = f"has more than {limit} characters" if too_long else "is not UTF-8 text"
        raise MediaProblem(
            f"`{att.name}` {why}, so it cannot be put into the message for {agent.name}."
        )

    async def _tell_heard(
        self, target: ReplyTarget, heard: list[str], previous: asyncio.Future[None] | None
    ) -> None:
        """Replies with the transcript, after the room's previous answer. An aside: it is no
        part of the answer (see `matrix.replies`)."""
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        quoted = "\n".join(f"> {line}" for t in heard for line in t.splitlines())
        await self.outbox.reply(target, f"🎤 I heard:\n{quoted}", extra={ASIDE_KEY: True})

    async def _fetch(self, att: Attachment, settings: Settings) -> bytearray:
        try:
            return await self.downloads.fetch(att, settings.media.max_bytes)
        except MediaFailed as e:
            raise MediaProblem(str(e)) from e

    @asynccontextmanager
    async def loaded(
        self, job: Job, request: AgentRequest, settings: Settings
    ) -> AsyncIterator[AgentRequest]:
        """The request with the bytes of the message's files and of the newest images of its
        context (`attachments.images_in_context`, within the token budget)."""
        media, agent = settings.media, request.agent
        current = tuple(a for a in job.attachments if not a.inlined)
        request = attrs.evolve(request, attachments=current, max_file_bytes=media.max_bytes)
        room_for = (agent.max_context_tokens - request.context_tokens) // IMAGE_TOKENS
        again = min(media.images_in_context - len(current), room_for)
        # Only agents that see images and are sent the history get earlier images again.
        sees_history = accepts(agent, PICTURE) and (agent.backend != "http" or agent.send_history)
        chosen = _newest_images(request.history, again) if sees_history else {}
        if not current and not chosen:
            yield request
            return
        async with self._slots:
            files = tuple([attrs.evolve(a, data=await self._fetch(a, settings)) for a in current])
            history = list(request.history)
            for (index, position), att in chosen.items():
                turn = history[index]
                data = await self._fetch_again(att, settings)
                attachments = list(turn.attachments)
                attachments[position] = attrs.evolve(att, data=data)
                history[index] = attrs.evolve(turn, attachments=tuple(attachments))
            tokens = request.context_tokens + IMAGE_TOKENS * (len(chosen) + len(files))
            yield attrs.evolve(
                request, attachments=files, history=tuple(history), context_tokens=tokens
            )

    async def _fetch_again(self, att: Attachment, settings: Settings) -> bytearray | None:
        """An earlier image: if it cannot be had any more, the agent sees its label."""
        try:
            return await self.downloads.fetch(att, settings.media.max_bytes)
        except MediaFailed as e:
            self.log.info(f"An earlier image is not sent again: {e}")
            return None


def _newest_images(history: tuple[Turn, ...], count: int) -> dict[tuple[int, int], Attachment]:
    """The newest `count` images of the users' turns: (turn index, attachment index) -> image."""
    chosen: dict[tuple[int, int], Attachment] = {}
    for index in range(len(history) - 1, -1, -1):
        turn = history[index]
        for position in range(len(turn.attachments) - 1, -1, -1):
            att = turn.attachments[position]
            if len(chosen) >= count:
                return chosen
            if turn.role == USER and not att.inlined and category(att) == PICTURE:
                chosen[(index, position)] = att
    return chosen
