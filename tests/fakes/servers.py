"""A local OpenAI-compatible server and a local `http` agent server, with scriptable failures.

Each request takes the next scripted `Behavior`, or the default one when the script is empty.
Every request body and its headers are recorded, so tests can see what the plugin sent.
"""

from __future__ import annotations

import asyncio
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
        app = web.Application()
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
                parts = split(text, behavior.chunks or 3)
                try:
                    return await self._stream(request, behavior, parts, usage)
                except (ConnectionResetError, asyncio.CancelledError):
                    self.disconnects += 1
                    raise
            whole = self.whole(text)
            if behavior.usage is not None:
                whole["usage"] = behavior.usage
            return web.json_response(whole)
        finally:
            self.active -= 1

    async def _stream(
        self,
        request: web.Request,
        behavior: Behavior,
        parts: list[str],
        usage: dict[str, int] | None,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for n, part in enumerate(parts):
            if behavior.break_after is not None and n >= behavior.break_after:
                request.transport.close()  # type: ignore[union-attr]
                return resp
            await resp.write(f"data: {json.dumps(self.chunk(part))}\n\n".encode())
            if behavior.chunk_delay:
                await asyncio.sleep(behavior.chunk_delay)
                if request.transport is None or request.transport.is_closing():
                    raise ConnectionResetError("the client closed the connection")
        if usage is not None:
            await resp.write(f"data: {json.dumps(self.usage_chunk(usage))}\n\n".encode())
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


class FakeOpenAI(FakeServer):
    """`POST /v1/chat/completions`, answering "reply to: <last user message>"."""

    def reply_text(self, body: dict[str, Any]) -> str:
        return f"reply to: {body['messages'][-1]['content']}"

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
