"""What every agent backend offers, the errors it raises, and the HTTP plumbing they share.

A backend turns one request into a stream of text deltas. A backend that cannot stream yields the
whole reply as one delta, so the dispatcher handles both the same way.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import aiohttp
from attrs import field, frozen

from ..ops.settings import AgentSettings
from .files import Attachment, Blobs, OutFile

# Backoff before each retry of a 5xx answer; its length is the number of retries.
SERVER_ERROR_BACKOFF = (0.5, 1.5)
# Tries in all (the first one included) when the backend answers 429.
RATE_LIMIT_TRIES = 3
# Wait after a 429 without Retry-After, and the most a Retry-After may make us wait.
DEFAULT_RETRY_AFTER = 1.0
MAX_RETRY_AFTER = 60.0
# The longest line of an event stream when no file is expected in it.
MAX_STREAM_LINE = 1024 * 1024


@frozen
class Turn:
    role: str
    content: str
    # Who wrote a user turn (a Matrix ID), so that a shared room's agent knows who said what.
    sender: str = ""
    # The turn's files: references, with their bytes where they are sent again (`Attachment`).
    attachments: tuple[Attachment, ...] = ()


@frozen
class Usage:
    """The tokens an answer cost, as the agent's server reported them; a backend yields it among
    its text deltas."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def usage_of(payload: Any) -> Usage | None:
    """An OpenAI-style `usage` object of a JSON answer or stream chunk, if it has one."""
    usage = payload.get("usage") if isinstance(payload, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (prompt, completion)
    ):
        return None
    return Usage(prompt, completion)


# What a backend yields: text deltas, the files it answers with, and the usage it reports.
Delta = str | OutFile | Usage


@frozen
class AgentRequest:
    """Everything one backend call needs. The agent settings hold secrets: never log this."""

    agent: AgentSettings = field(repr=False)
    chat_id: str
    room_id: str
    sender: str
    event_id: str
    text: str
    # The agent's system prompt with the shared memory appended.
    system_prompt: str
    memory: tuple[str, ...]
    # Earlier turns of the context, oldest first, without the current message.
    history: tuple[Turn, ...]
    # Estimated tokens of system prompt, memory, history and message together.
    context_tokens: int = 0
    # More than one person talks in the room: the messages carry their senders.
    shared: bool = False
    # The message's files, with their bytes (see `conversation.media_in`).
    attachments: tuple[Attachment, ...] = ()
    # The largest file an agent may answer with (`attachments.max_bytes`).
    max_file_bytes: int = 10 * 1024 * 1024


class Backend(Protocol):
    def reply(self, request: AgentRequest) -> AsyncIterator[Delta]:
        """Yields the reply as text deltas: many when streaming, one otherwise; the files the
        agent answers with; and the usage, when the server reports it."""
        ...


class BackendError(Exception):
    """A failed agent call. `describe()` is what the room is told; it never holds a secret."""

    kind = "backend"

    def describe(self) -> str:
        return "it failed"


class BackendRefused(BackendError):
    kind = "refused"

    def describe(self) -> str:
        return "could not connect to it (connection refused)"


class BackendTimeout(BackendError):
    kind = "timeout"

    def __init__(self, seconds: float | None = None) -> None:
        super().__init__(seconds)
        self.seconds = seconds

    def describe(self) -> str:
        if self.seconds is None:
            return "it did not answer in time"
        return f"it did not answer within {self.seconds:g} s"


class BackendServerError(BackendError):
    kind = "server_error"

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status

    def describe(self) -> str:
        return f"its server failed (HTTP {self.status})"


class BackendRateLimited(BackendError):
    kind = "rate_limited"

    def describe(self) -> str:
        return "it is rate limited (HTTP 429) and still refused after waiting"


class BackendRejected(BackendError):
    """The agent's server refused the request (a 4xx other than 429): a wrong key, URL or
    model, which the operator fixes in the config."""

    kind = "rejected"

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status

    def describe(self) -> str:
        return f"its server refused the request (HTTP {self.status})"


class BackendBadResponse(BackendError):
    kind = "bad_response"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def describe(self) -> str:
        return f"its answer was not understood ({self.reason})"


class BackendDisconnected(BackendError):
    kind = "disconnected"

    def describe(self) -> str:
        return "the connection broke while it was answering"


def retry_after_seconds(resp: aiohttp.ClientResponse) -> float:
    try:
        value = float(resp.headers.get("Retry-After", ""))
    except ValueError:
        return DEFAULT_RETRY_AFTER
    return min(max(value, 0.0), MAX_RETRY_AFTER)


async def post_json(
    http: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    blobs: Blobs | None = None,
) -> aiohttp.ClientResponse:
    """POSTs and returns a 2xx response, retrying 5xx with backoff and 429 after Retry-After.

    Only the opening of the request is retried: once a reply streams, a retry would repeat text.
    The caller releases the response. The overall time limit is the dispatcher's. A body that
    refers to `blobs` is streamed, their data as base64 (see `files.Blobs`).
    """
    server_retries = 0
    tries = 0
    pieces, size = blobs.encode(body) if blobs else ([], 0)
    while True:
        tries += 1
        try:
            if blobs:
                sized = {**headers, "Content-Type": "application/json", "Content-Length": str(size)}
                resp = await http.post(url, data=blobs.stream(pieces), headers=sized)
            else:
                resp = await http.post(url, json=body, headers=headers)
        except aiohttp.ClientConnectorError as e:
            raise BackendRefused() from e
        except asyncio.TimeoutError as e:
            raise BackendTimeout() from e
        except aiohttp.ClientError as e:
            # The exception text can hold the URL, which the operator chose; the headers never.
            raise BackendBadResponse(type(e).__name__) from e
        if resp.status < 300:
            return resp
        resp.release()
        if resp.status == 429:
            if tries >= RATE_LIMIT_TRIES:
                raise BackendRateLimited()
            await asyncio.sleep(retry_after_seconds(resp))
        elif resp.status >= 500:
            if server_retries >= len(SERVER_ERROR_BACKOFF):
                raise BackendServerError(resp.status)
            await asyncio.sleep(SERVER_ERROR_BACKOFF[server_retries])
            server_retries += 1
        else:
            raise BackendRejected(resp.status)


def is_event_stream(resp: aiohttp.ClientResponse) -> bool:
    return resp.content_type == "text/event-stream"


async def stream_lines(resp: aiohttp.ClientResponse, max_line: int) -> AsyncIterator[bytes]:
    """The lines of a response, each at most `max_line` bytes. aiohttp's own line reader stops
    at 512 KiB, and a line of an event stream can carry a whole file as base64."""
    buffer = bytearray()
    async for chunk in resp.content.iter_any():
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            yield bytes(buffer[start:end])
            start = end + 1
        del buffer[:start]
        if len(buffer) > max_line:
            raise BackendBadResponse("a stream line is too long")
    if buffer:
        yield bytes(buffer)


async def sse_payloads(
    resp: aiohttp.ClientResponse, max_line: int = MAX_STREAM_LINE
) -> AsyncIterator[Any]:
    """The JSON payloads of a `text/event-stream` response's `data:` lines, until `[DONE]`."""
    async for raw in stream_lines(resp, max_line):
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        if not data:
            continue
        try:
            yield json.loads(data)
        except json.JSONDecodeError as e:
            raise BackendBadResponse("a stream line is not JSON") from e


async def read_json(resp: aiohttp.ClientResponse) -> Any:
    try:
        return await resp.json(content_type=None)
    except (json.JSONDecodeError, aiohttp.ContentTypeError, UnicodeDecodeError) as e:
        raise BackendBadResponse("the body is not JSON") from e


async def answer_deltas(
    resp: aiohttp.ClientResponse,
    stream_delta: Callable[[Any], Delta | list[Delta]],
    whole: Callable[[Any], Delta | list[Delta]],
    max_line: int = MAX_STREAM_LINE,
) -> AsyncIterator[Delta]:
    """The answer of a response as deltas: a stream's payloads one by one, or a JSON answer
    whole, and its `usage` where the server reports one. Some servers ignore a request to
    stream: the content type says what came back."""
    try:
        if is_event_stream(resp):
            async for payload in sse_payloads(resp, max_line):
                usage = usage_of(payload)
                # A usage-only chunk (OpenAI's last, with include_usage) has no choices.
                if usage is None or payload.get("choices"):
                    for delta in _listed(stream_delta(payload)):
                        if delta:
                            yield delta
                if usage is not None:
                    yield usage
        else:
            answer = await read_json(resp)
            for delta in _listed(whole(answer)):
                yield delta
            usage = usage_of(answer)
            if usage is not None:
                yield usage
    except BaseException:
        # Stopped or failed while reading: the connection is closed, so the agent's server sees
        # the call end (a released connection would be kept for reuse while it still streams).
        resp.close()
        raise
    finally:
        resp.release()


def _listed(value: Delta | list[Delta]) -> list[Delta]:
    return value if isinstance(value, list) else [value]
