"""Any OpenAI-compatible `/chat/completions` endpoint: OpenAI, Ollama, vLLM, llama.cpp, LiteLLM."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from .base import AgentRequest, BackendBadResponse, answer_deltas, post_json


class OpenAIBackend:
    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http

    async def reply(self, request: AgentRequest) -> AsyncIterator[str]:
        agent = request.agent
        headers = {"Authorization": f"Bearer {agent.api_key}"} if agent.api_key else {}
        body: dict[str, Any] = {"messages": messages(request), "stream": agent.stream}
        if agent.model:
            body["model"] = agent.model
        resp = await post_json(self.http, f"{agent.base_url}/chat/completions", body, headers)
        async for delta in answer_deltas(resp, _delta, _whole):
            yield delta


def messages(request: AgentRequest) -> list[dict[str, str]]:
    result = []
    if request.system_prompt:
        result.append({"role": "system", "content": request.system_prompt})
    result.extend({"role": t.role, "content": t.content} for t in request.history)
    result.append({"role": "user", "content": request.text})
    return result


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
