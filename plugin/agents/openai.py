"""Any OpenAI-compatible `/chat/completions` endpoint: OpenAI, Ollama, vLLM, llama.cpp, LiteLLM."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from .base import AgentRequest, BackendBadResponse, Delta, Turn, answer_deltas, post_json
from .content import chat_message
from .files import Blobs

# OpenAI's rule for a message's `name`.
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class OpenAIBackend:
    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http

    async def reply(self, request: AgentRequest) -> AsyncIterator[Delta]:
        agent = request.agent
        headers = {"Authorization": f"Bearer {agent.api_key}"} if agent.api_key else {}
        blobs = Blobs()
        body: dict[str, Any] = {"messages": messages(request, blobs), "stream": agent.stream}
        if agent.stream:
            # The real token counts come in a last chunk only when asked for.
            body["stream_options"] = {"include_usage": True}
        if agent.model:
            body["model"] = agent.model
        url = f"{agent.base_url}/chat/completions"
        resp = await post_json(self.http, url, body, headers, blobs)
        async for delta in answer_deltas(resp, _delta, _whole):
            yield delta


def messages(request: AgentRequest, blobs: Blobs | None = None) -> list[dict[str, Any]]:
    """The conversation; a user turn with files sent along is a list of content parts."""
    blobs = blobs if blobs is not None else Blobs()
    result: list[dict[str, Any]] = []
    if request.system_prompt:
        result.append({"role": "system", "content": request.system_prompt})
    result.extend(_message(request, turn, blobs) for turn in request.history)
    asked = Turn("user", request.text, request.sender, request.attachments)
    result.append(_message(request, asked, blobs))
    return result


def _message(request: AgentRequest, turn: Turn, blobs: Blobs) -> dict[str, Any]:
    message = chat_message(turn.role, turn.content, turn.attachments, blobs)
    if request.shared and turn.role == "user" and turn.sender:
        # In a shared room, who said what: OpenAI's `name` of each user message.
        message["name"] = sender_name(turn.sender)
    return message


def sender_name(user_id: str) -> str:
    """A Matrix ID as a message `name`: its localpart, in the characters OpenAI accepts."""
    return _NAME_UNSAFE.sub("_", user_id[1:].split(":", 1)[0])[:64] or "user"


def _delta(payload: Any) -> str:
    try:
        choice = payload["choices"][0] if payload.get("choices") else {}
        return choice.get("delta", {}).get("content") or ""
    except (AttributeError, KeyError, TypeError) as e:
        raise BackendBadResponse("a stream chunk has no choices[0].delta") from e


def _whole(payload: Any) -> str:
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as e:
        raise BackendBadResponse("no choices[0].message.content") from e
    if not isinstance(content, str):
        raise BackendBadResponse("choices[0].message.content is not text")
    return content
