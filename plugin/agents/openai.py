"""Any OpenAI-compatible `/chat/completions` endpoint: OpenAI, Ollama, vLLM, llama.cpp, LiteLLM."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from .base import AgentRequest, BackendBadResponse, Turn, Usage, answer_deltas, post_json

# OpenAI's rule for a message's `name`.
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class OpenAIBackend:
    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http

    async def reply(self, request: AgentRequest) -> AsyncIterator[str | Usage]:
        agent = request.agent
        headers = {"Authorization": f"Bearer {agent.api_key}"} if agent.api_key else {}
        body: dict[str, Any] = {"messages": messages(request), "stream": agent.stream}
        if agent.stream:
            # The real token counts come in a last chunk only when asked for.
            body["stream_options"] = {"include_usage": True}
        if agent.model:
            body["model"] = agent.model
        resp = await post_json(self.http, f"{agent.base_url}/chat/completions", body, headers)
        async for delta in answer_deltas(resp, _delta, _whole):
            yield delta


def messages(request: AgentRequest) -> list[dict[str, str]]:
    result = []
    if request.system_prompt:
        result.append({"role": "system", "content": request.system_prompt})
    result.extend(_message(request, t) for t in request.history)
    result.append(_message(request, Turn("user", request.text, request.sender)))
    return result


def _message(request: AgentRequest, turn: Turn) -> dict[str, str]:
    message = {"role": turn.role, "content": turn.content}
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
