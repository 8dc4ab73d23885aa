"""An answer with files: the agent's call with the message's files sent along, the voice
version of the answer (`!ai voice on`), and showing it all in Matrix, in an order that keeps
"answered" provable.

The files are posted first, each a reply to the user's message marked as continued, and the
text's final edit last: until then the message is not answered in Matrix, and a crash in between
is answered again at the next start. An answer without text (an image) ends with its last file.
"""

from __future__ import annotations

from logging import Logger

from attrs import define, field

from ..agents.base import AgentRequest
from ..agents.files import AUDIO, FILE, IMAGE, VIDEO, Attachment, OutFile
from ..db.rows import RoomRow
from ..matrix.outbox import Outbox
from ..matrix.replies import ASIDE_KEY, CONTINUED_KEY
from ..media.refs import VOICE_KEY, to_json
from ..media.speech import Speech, ogg_duration_ms
from ..media.transfer import MediaFailed
from ..ops.metrics import Metrics
from ..ops.settings import AgentSettings, Settings
from .agent_call import AgentCaller
from .controls import CallControl
from .media_in import MediaIn
from .queues import Job
from .stream import ReplyStream

_MSGTYPES = {IMAGE: "m.image", AUDIO: "m.audio", VIDEO: "m.video", FILE: "m.file"}


@define(eq=False)
class Answer:
    text: str
    files: list[OutFile]
    # Estimated tokens of the request that the agent answered.
    tokens: int
    # Notes for the room that are no part of the answer (why there is no voice version).
    notes: list[str] = field(factory=list)
    # The answer's newest event in Matrix, once it is shown.
    newest: str = ""

    def file_refs(self) -> str:
        """The posted files, as references for the context."""
        return to_json([f.posted for f in self.files if f.posted is not None])


def kind_of(mimetype: str) -> str:
    major = mimetype.split("/", 1)[0]
    return {"image": IMAGE, "audio": AUDIO, "video": VIDEO}.get(major, FILE)


@define(eq=False)
class MediaOut:
    media_in: MediaIn
    caller: AgentCaller
    speech: Speech
    outbox: Outbox
    metrics: Metrics
    log: Logger

    async def answer(
        self,
        job: Job,
        agent: AgentSettings,
        request: AgentRequest,
        room: RoomRow,
        settings: Settings,
        stream: ReplyStream,
        control: CallControl,
    ) -> Answer:
        """The agent's answer to the message, with its files, and spoken where the room asks.
        `control` is the call's stop handle and gets the usage the server reported."""
        files: list[OutFile] = []
        async with self.media_in.loaded(job, request, settings) as loaded:
            text = await self.caller.call(agent, loaded, settings, stream, control, files)
            answer = Answer(text, files, loaded.context_tokens)
        if room.voice and text.strip():
            await self._speak(answer, settings)
        return answer

    async def _speak(self, answer: Answer, settings: Settings) -> None:
        speak = settings.media.speak
        if speak is None:
            answer.notes.append(
                "(Voice answers are on in this room, but speech is not set up on this bot: an "
                "admin can configure `speech.speak`.)"
            )
            return
        try:
            answer.files.append(
                await self.speech.speak(speak, answer.text, settings.media.max_bytes)
            )
        except MediaFailed as e:
            self.log.warning(f"No voice version of an answer: {e}")
            self.metrics.error("speech", str(e))
            answer.notes.append(f"(There is no voice version of this answer: {e}.)")

    async def show(self, job: Job, stream: ReplyStream, answer: Answer) -> None:
        """Shows the answer (see the module's doc). Safe to run again after a Matrix failure:
        what is in Matrix already is not sent twice."""
        target = stream.target
        has_text = bool(answer.text.strip())
        for n, file in enumerate(answer.files):
            if file.posted is not None:
                continue
            last = not has_text and n == len(answer.files) - 1
            kind = kind_of(file.mimetype)
            answer.newest = await self.outbox.send_file(
                target, _MSGTYPES[kind], file, _extra(file, continued=not last)
            )
            location = file.location or {}
            encryption = location.get("file")
            mxc = encryption["url"] if encryption else location.get("url", "")
            file.posted = Attachment(
                kind, file.mimetype, file.name, file.size, mxc, encryption, voice=file.voice
            )
            # Its bytes are in Matrix now.
            file.data = None
        while answer.notes:
            await self.outbox.reply(target, answer.notes[0], extra={ASIDE_KEY: True})
            answer.notes.pop(0)
        if has_text:
            await stream.finish()
            answer.newest = stream.part_ids()[-1]
        else:
            await stream.discard()
        if not answer.newest:
            raise AssertionError(f"the answer to {job.event.event_id} showed nothing")


def _extra(file: OutFile, continued: bool) -> dict[str, object]:
    extra: dict[str, object] = {CONTINUED_KEY: True} if continued else {}
    if file.voice:
        duration = ogg_duration_ms(file.data or b"")
        audio: dict[str, object] = {"waveform": []}
        if duration is not None:
            audio["duration"] = duration
            extra["info"] = {"duration": duration}
        extra["org.matrix.msc1767.audio"] = audio
        extra[VOICE_KEY] = {}
        extra["body"] = "Voice message"
    return extra
