"""An agent platform behind a webhook.

The contract (also in the README):
- Request: `POST url` with the agent's `headers` and the JSON
  `{"chat_id", "agent", "room_id", "sender", "event_id", "text", "memory": [...]}`, plus
  `"history": [{"role", "content"}, ...]` (oldest first) when the agent sets `send_history: true`.
  History entries of users carry their `sender`.
- Answer: either JSON `{"reply": "..."}`, or `text/event-stream` lines `data: {"delta": "..."}`
  ending with `data: [DONE]`; an optional `usage` (`{"prompt_tokens", "completion_tokens"}`) in
  the JSON or on a stream line of its own.
- Feedback (a 👍 or 👎 on an answer): `POST url` with `{"type": "feedback", "chat_id", "agent",
  "room_id", "sender", "event_id", "reply_to", "rating": "up"|"down"}`; any 2xx answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from .base import AgentRequest, BackendBadResponse, Usage, answer_deltas, post_json


class HttpBackend:
    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http

    async def reply(self, request: AgentRequest) -> AsyncIterator[str | Usage]:
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
        body["history"] = [_entry(t.role, t.content, t.sender) for t in request.history]
    return body


def _entry(role: str, content: str, sender: str) -> dict[str, str]:
    entry = {"role": role, "content": content}
    if sender:
        entry["sender"] = sender
    return entry
