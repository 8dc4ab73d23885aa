"""A local OpenAI-compatible server and a local `http` agent server, with scriptable failures.

Each request takes the next scripted `Behavior`, or the default one when the script is empty.
Every request body and its headers are recorded, so tests can see what the plugin sent.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections import deque
from typing import Any

from aiohttp import web
from attrs import define, field

# The api_key and headers of the agents the tests configure: it must never reach a room or a log.
SECRET = "sk-e2e-secret-4242"
# What `/avatar.png` serves: the bytes of a PNG signature, which is all the plugin looks at.
AVATAR_PNG = b"\x89PNG\r\n\x1a\n-fake-avatar"


@define
class Behavior:
    status: int = 200
    # Seconds before the answer starts.
    delay: float = 0.0
    # Sent as the Retry-After header with a 429.
    retry_after: float | None = None
    # The reply; by default it is derived from the request's text.
    reply: str | None = None
    # Stream the reply in this many chunks (0: whole JSON unless the request asks to stream).
    chunks: int = 0
    chunk_delay: float = 0.0
    # Close the connection after this many chunks, mid-stream.
    break_after: int | None = None
    # The token counts the server reports (`{"prompt_tokens", "completion_tokens"}`): in the
    # JSON answer, or in a last stream chunk when the request asks for it.
    usage: dict[str, int] | None = None
    # Files the http agent answers with: {"mimetype", "name", "data_base64"} each, in the JSON
    # answer, or as `attachment` events after the text when it streams.
    attachments: list[dict[str, Any]] = field(factory=list)


@define
class Recorded:
    body: dict[str, Any]
    headers: dict[str, str]
    # When the request arrived (time.monotonic(), comparable across processes on Linux).
    at: float = field(factory=time.monotonic)


def closed_port_url(path: str = "") -> str:
    """A loopback URL nothing listens on: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def split(text: str, parts: int) -> list[str]:
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)]


@define
class FakeServer:
    default: Behavior = field(factory=Behavior)
    requests: list[Recorded] = field(factory=list)
    script_queue: deque[Behavior] = field(factory=deque)
    runner: web.AppRunner | None = None
    port: int = 0
    # Requests being answered right now, and the most seen at once.
    active: int = 0
    max_active: int = 0
    # Streamed answers whose client closed the connection before the end.
    disconnects: int = 0
    # Requests that are not for an answer (an http agent's feedback).
    feedback: list[dict[str, Any]] = field(factory=list)
    avatar_downloads: int = 0

    def script(self, *behaviors: Behavior) -> None:
        self.script_queue.extend(behaviors)

    async def start(self) -> None:
        # The benchmarks send images of 10 MB, as base64 in JSON.
        app = web.Application(client_max_size=64 * 1024 * 1024)
        self.routes(app)
        app.router.add_post("/{tail:.*}", self._handle)
        app.router.add_get("/avatar.png", self._avatar)
        # A test that leaves a slow answer pending must not wait for it when the server stops.
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_for_requests(self, count: int, timeout: float = 20) -> list[Recorded]:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.requests) < count:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{len(self.requests)} of {count} requests arrived")
            await asyncio.sleep(0.02)
        return self.requests

    def routes(self, app: web.Application) -> None:
        """Endpoints of this kind of server besides its chat endpoint."""

    async def _avatar(self, request: web.Request) -> web.Response:
        """An agent's avatar image, as a web server would serve it."""
        self.avatar_downloads += 1
        return web.Response(body=AVATAR_PNG, content_type="image/png")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("type") == "feedback":
            self.feedback.append(body)
            return web.json_response({"ok": True})
        self.requests.append(Recorded(body, dict(request.headers)))
        behavior = self.script_queue.popleft() if self.script_queue else self.default
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if behavior.delay:
                await asyncio.sleep(behavior.delay)
            if behavior.status != 200:
                headers = {}
                if behavior.retry_after is not None:
                    headers["Retry-After"] = f"{behavior.retry_after:g}"
                return web.json_response(
                    {"error": f"scripted {behavior.status}"},
                    status=behavior.status,
                    headers=headers,
                )
            text = behavior.reply if behavior.reply is not None else self.reply_text(body)
            if behavior.chunks or self.wants_stream(body):
                usage = behavior.usage if self.wants_usage(body) else None
                chunks = [self.chunk(p) for p in split(text, behavior.chunks or 3) if p]
                chunks += [{"attachment": a} for a in behavior.attachments]
                if usage is not None:
                    chunks.append(self.usage_chunk(usage))
                try:
                    return await self._stream(request, behavior, chunks)
                except (ConnectionResetError, asyncio.CancelledError):
                    self.disconnects += 1
                    raise
            whole = self.whole(text)
            if behavior.attachments:
                whole["attachments"] = behavior.attachments
            if behavior.usage is not None:
                whole["usage"] = behavior.usage
            return web.json_response(whole)
        finally:
            self.active -= 1

    async def _stream(
        self, request: web.Request, behavior: Behavior, chunks: list[dict[str, Any]]
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for n, chunk in enumerate(chunks):
            if behavior.break_after is not None and n >= behavior.break_after:
                request.transport.close()  # type: ignore[union-attr]
                return resp
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if behavior.chunk_delay:
                await asyncio.sleep(behavior.chunk_delay)
                if request.transport is None or request.transport.is_closing():
                    raise ConnectionResetError("the client closed the connection")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    # The wire format, per kind of server.

    def reply_text(self, body: dict[str, Any]) -> str:
        raise NotImplementedError

    def wants_stream(self, body: dict[str, Any]) -> bool:
        return False

    def wants_usage(self, body: dict[str, Any]) -> bool:
        return True

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        return {"usage": usage}

    def whole(self, text: str) -> dict[str, Any]:
        raise NotImplementedError

    def chunk(self, text: str) -> dict[str, Any]:
        raise NotImplementedError


@define
class Audio:
    """What the fake's audio and image endpoints answer, and what they were sent."""

    transcript: str = "the words of the voice message"
    # Ogg Opus bytes would do too; these only have to come back unchanged.
    speech: bytes = b"OggS" + bytes(range(256)) * 8
    image: bytes = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 16
    # Each transcription request: its form fields, and the uploaded file's bytes as "file".
    transcriptions: list[dict[str, Any]] = field(factory=list)
    speeches: list[dict[str, Any]] = field(factory=list)
    generations: list[dict[str, Any]] = field(factory=list)
    # The status the next requests of each endpoint answer (200 when empty).
    fail: deque[int] = field(factory=deque)


def text_of(content: Any) -> str:
    """An OpenAI message's text: the content itself, or its text parts joined."""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if p.get("type") == "text")


def data_urls(content: Any) -> list[str]:
    """The data URLs of an OpenAI message's image and file parts."""
    if isinstance(content, str):
        return []
    urls = [p["image_url"]["url"] for p in content if p.get("type") == "image_url"]
    return urls + [p["file"]["file_data"] for p in content if p.get("type") == "file"]


# Not slotted: a test may replace a method of the wire format (`wants_stream`).
@define(slots=False)
class FakeOpenAI(FakeServer):
    """`POST /v1/chat/completions`, answering "reply to: <last user message>"; and
    `/v1/audio/transcriptions`, `/v1/audio/speech`, `/v1/images/generations` (see `Audio`)."""

    audio: Audio = field(factory=Audio)

    def reply_text(self, body: dict[str, Any]) -> str:
        return f"reply to: {text_of(body['messages'][-1]['content'])}"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/audio/transcriptions", self._transcribe)
        app.router.add_post("/v1/audio/speech", self._speak)
        app.router.add_post("/v1/images/generations", self._generate)

    def _failed(self) -> web.Response | None:
        status = self.audio.fail.popleft() if self.audio.fail else 200
        if status == 200:
            return None
        return web.json_response({"error": f"scripted {status}"}, status=status)

    async def _transcribe(self, request: web.Request) -> web.Response:
        form = await request.post()
        fields = {k: v for k, v in form.items() if k != "file"}
        upload = form["file"]
        fields["file"] = upload.file.read()  # type: ignore[union-attr]
        fields["filename"] = upload.filename  # type: ignore[union-attr]
        self.audio.transcriptions.append(fields)
        return self._failed() or web.json_response({"text": self.audio.transcript})

    async def _speak(self, request: web.Request) -> web.Response:
        self.audio.speeches.append(await request.json())
        failed = self._failed()
        return failed or web.Response(body=self.audio.speech, content_type="audio/ogg")

    async def _generate(self, request: web.Request) -> web.Response:
        self.audio.generations.append(await request.json())
        image = base64.b64encode(self.audio.image).decode()
        answer = {"created": 0, "data": [{"b64_json": image, "revised_prompt": "a fake image"}]}
        return self._failed() or web.json_response(answer)

    def wants_stream(self, body: dict[str, Any]) -> bool:
        return bool(body.get("stream"))

    def wants_usage(self, body: dict[str, Any]) -> bool:
        return bool((body.get("stream_options") or {}).get("include_usage"))

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        # OpenAI's last chunk with include_usage: no choices, only the usage.
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": usage,
        }

    def whole(self, text: str) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
        }

    def chunk(self, text: str) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
        }

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def agent(self, agent_id: str = "assistant", **extra: Any) -> dict[str, Any]:
        """The config of an openai agent served by this server."""
        return {
            "id": agent_id,
            "name": agent_id.title(),
            "backend": "openai",
            "base_url": self.base_url,
            "api_key": SECRET,
            "model": "fake-model",
            "system_prompt": "You are a test assistant.",
            **extra,
        }

    def system_prompts(self) -> list[str]:
        return [
            m["content"] for r in self.requests for m in r.body["messages"] if m["role"] == "system"
        ]


class FakeAgentPlatform(FakeServer):
    """The `http` backend's webhook, answering "platform reply to: <text>"."""

    def reply_text(self, body: dict[str, Any]) -> str:
        return f"platform reply to: {body['text']}"

    def whole(self, text: str) -> dict[str, Any]:
        return {"reply": text}

    def chunk(self, text: str) -> dict[str, Any]:
        return {"delta": text}

    @property
    def chat_url(self) -> str:
        return f"{self.url}/chat"

    def agent(self, agent_id: str = "platform", **extra: Any) -> dict[str, Any]:
        """The config of an http agent served by this server."""
        return {
            "id": agent_id,
            "backend": "http",
            "url": self.chat_url,
            "headers": {"X-Api-Key": SECRET},
            **extra,
        }
