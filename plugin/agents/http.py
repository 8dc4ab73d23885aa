"""An agent platform behind a webhook.

The contract (also in the README):
- Request: `POST url` with the agent's `headers` and the JSON
  `{"chat_id", "agent", "room_id", "sender", "event_id", "text", "memory": [...]}`, plus
  `"history": [{"role", "content"}, ...]` (oldest first) when the agent sets `send_history: true`.
- Answer: either JSON `{"reply": "..."}`, or `text/event-stream` lines `data: {"delta": "..."}`
  ending with `data: [DONE]`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from .base import AgentRequest, BackendBadResponse, answer_deltas, post_json


class HttpBackend:
    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http

    async def reply(self, request: AgentRequest) -> AsyncIterator[str]:
        agent = request.agent
        resp = await post_json(self.http, agent.url, payload(request), dict(agent.headers))
        async for delta in answer_deltas(resp, _delta, _whole):
            yield delta


def _delta(chunk: Any) -> str:
    delta = chunk.get("delta") if isinstance(chunk, dict) else None
    if not isinstance(delta, str):
        raise BackendBadResponse('a stream line has no "delta" text')
    return delta


def _whole(answer: Any) -> str:
    reply = answer.get("reply") if isinstance(answer, dict) else None
    if not isinstance(reply, str):
        raise BackendBadResponse('the JSON has no "reply" text')
    return reply


def payload(request: AgentRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "chat_id": request.chat_id,
        "agent": request.agent.id,
        "room_id": request.room_id,
        "sender": request.sender,
        "event_id": request.event_id,
        "text": request.text,
        "memory": list(request.memory),
    }
    if request.agent.send_history:
        body["history"] = [{"role": t.role, "content": t.content} for t in request.history]
    return body
