"""Speech through OpenAI-compatible audio endpoints: voice messages transcribed
(`/audio/transcriptions`, `speech.transcribe`) and answers spoken (`/audio/speech`,
`speech.speak`), with the plugin's HTTP session."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from attrs import define

from ..agents.files import OutFile
from ..ops.settings import SpeechEndpoint
from .transfer import CHUNK, MediaFailed

TIMEOUT = aiohttp.ClientTimeout(total=120)
# OpenAI's /audio/speech reads at most this many characters.
MAX_SPEECH_CHARS = 4096
# What the bot asks for: Opus in an Ogg container, what Matrix clients play as voice messages.
SPEECH_FORMAT = "opus"
_OGG_TYPES = ("audio/ogg", "audio/opus", "application/ogg")


@define(eq=False)
class Speech:
    http: aiohttp.ClientSession

    async def transcribe(
        self, endpoint: SpeechEndpoint, data: bytearray, name: str, mimetype: str
    ) -> str:
        """The text of a voice message; raises MediaFailed with what the user is told."""
        form = aiohttp.FormData()
        form.add_field("file", data, filename=name or "voice.ogg", content_type=mimetype)
        form.add_field("model", endpoint.model or "whisper-1")
        form.add_field("response_format", "json")
        if endpoint.language:
            form.add_field("language", endpoint.language)
        async with self._post(endpoint, "transcriptions", "transcription", data=form) as resp:
            try:
                answer = await resp.json(content_type=None)
            except ValueError:
                answer = None
        text = answer.get("text") if isinstance(answer, dict) else None
        if not isinstance(text, str):
            raise MediaFailed("the transcription server's answer has no text")
        return text.strip()

    async def speak(self, endpoint: SpeechEndpoint, text: str, limit: int) -> OutFile:
        """The answer as a voice message; raises MediaFailed."""
        body = {
            "model": endpoint.model or "tts-1",
            "input": text[:MAX_SPEECH_CHARS],
            "voice": endpoint.voice or "alloy",
            "response_format": SPEECH_FORMAT,
        }
        async with self._post(endpoint, "speech", "speech", json=body) as resp:
            mimetype = resp.content_type or "application/octet-stream"
            data = bytearray()
            async for chunk in resp.content.iter_chunked(CHUNK):
                if len(data) + len(chunk) > limit:
                    raise MediaFailed("the speech server's audio is too large")
                data += chunk
        if not data:
            raise MediaFailed("the speech server gave no audio")
        if mimetype in _OGG_TYPES or data.startswith(b"OggS"):
            return OutFile("audio/ogg", "voice.ogg", data, voice=True)
        # Not Ogg: an audio message, which clients may not show as a voice message.
        return OutFile(mimetype, "voice" + _suffix(mimetype), data)

    @asynccontextmanager
    async def _post(
        self, endpoint: SpeechEndpoint, path: str, what: str, **kwargs: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A 2xx answer of `/audio/<path>`; its failures as MediaFailed naming the `what`."""
        url = f"{endpoint.base_url}/audio/{path}"
        try:
            async with self.http.post(
                url, headers=_auth(endpoint), timeout=TIMEOUT, **kwargs
            ) as resp:
                if resp.status >= 300:
                    raise MediaFailed(f"the {what} server failed (HTTP {resp.status})")
                yield resp
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise MediaFailed(f"the {what} server failed ({type(e).__name__})") from e


def _auth(endpoint: SpeechEndpoint) -> dict[str, str]:
    return {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}


_SUFFIXES = {"audio/mpeg": ".mp3", "audio/wav": ".wav", "audio/aac": ".aac", "audio/flac": ".flac"}


def _suffix(mimetype: str) -> str:
    return _SUFFIXES.get(mimetype, "")


def ogg_duration_ms(data: bytes | bytearray) -> int | None:
    """The length of an Ogg Opus stream, from its last page's granule position (48 kHz samples)
    less the pre-skip of its header; None when the bytes are not Ogg Opus."""
    if not data.startswith(b"OggS"):
        return None
    head = data.find(b"OpusHead")
    last = data.rfind(b"OggS")
    if head < 0 or last < 0 or len(data) < last + 14 or len(data) < head + 12:
        return None
    (granule,) = struct.unpack_from("<q", data, last + 6)
    (pre_skip,) = struct.unpack_from("<H", data, head + 10)
    return max(0, (granule - pre_skip) // 48) if granule > 0 else None
