"""An agent platform behind a webhook.

The contract (also in the README):
- Request: `POST url` with the agent's `headers` and the JSON
  `{"chat_id", "agent", "room_id", "sender", "event_id", "text", "memory": [...]}`, plus
  `"history": [{"role", "content"}, ...]` (oldest first) when the agent sets `send_history: true`
  (history entries of users carry their `sender`), and `"attachments": [{"kind", "mimetype",
  "name", "size", "mxc", "data_base64"}, ...]` when the message carries files.
- Answer: either JSON `{"reply": "...", "attachments": [...]}`, or `text/event-stream` lines
  `data: {"delta": "..."}` and `data: {"attachment": {...}}` ending with `data: [DONE]`; an
  answer's attachment is `{"mimetype", "name", "data_base64"}`; an optional `usage`
  (`{"prompt_tokens", "completion_tokens"}`) in the JSON or on a stream line of its own.
- Feedback (a 👍 or 👎 on an answer): `POST url` with `{"type": "feedback", "chat_id", "agent",
  "room_id", "sender", "event_id", "reply_to", "rating": "up"|"down"}`; any 2xx answer.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from .base import AgentRequest, BackendBadResponse, Delta, answer_deltas, post_json
from .content import contract_attachment
from .files import Attachment, Blobs, OutFile, b64_size

# A stream line may hold a whole file as base64, with room for the JSON around it.
_LINE_SLACK = 64 * 1024


class HttpBackend:
    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http

    async def reply(self, request: AgentRequest) -> AsyncIterator[Delta]:
        agent = request.agent
        blobs = Blobs()
        body = payload(request, blobs)
        resp = await post_json(self.http, agent.url, body, dict(agent.headers), blobs)
        limit = request.max_file_bytes
        max_line = b64_size(limit) + _LINE_SLACK
        async for delta in answer_deltas(
            resp, lambda c: _delta(c, limit), lambda a: _whole(a, limit), max_line
        ):
            yield delta


def _delta(chunk: Any, limit: int) -> Delta:
    if isinstance(chunk, dict) and "attachment" in chunk:
        return _out_file(chunk["attachment"], limit)
    delta = chunk.get("delta") if isinstance(chunk, dict) else None
    if not isinstance(delta, str):
        raise BackendBadResponse('a stream line has no "delta" text')
    return delta


def _whole(answer: Any, limit: int) -> list[Delta]:
    if not isinstance(answer, dict):
        raise BackendBadResponse('the JSON has no "reply" text')
    reply, files = answer.get("reply", ""), answer.get("attachments") or []
    if not isinstance(reply, str) or (not reply and not files):
        raise BackendBadResponse('the JSON has no "reply" text')
    if not isinstance(files, list):
        raise BackendBadResponse('"attachments" is not a list')
    return [reply, *(_out_file(f, limit) for f in files)]


def _out_file(raw: Any, limit: int) -> OutFile:
    if not isinstance(raw, dict) or not isinstance(raw.get("data_base64"), str):
        raise BackendBadResponse('an attachment has no "data_base64"')
    encoded = raw["data_base64"]
    if len(encoded) > b64_size(limit):
        raise BackendBadResponse(f"an attachment is larger than {limit} bytes")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BackendBadResponse("an attachment's data_base64 is not base64") from e
    mimetype = raw.get("mimetype") if isinstance(raw.get("mimetype"), str) else ""
    name = raw.get("name") if isinstance(raw.get("name"), str) else ""
    return OutFile(mimetype or "application/octet-stream", name or "file", data)


def payload(request: AgentRequest, blobs: Blobs | None = None) -> dict[str, Any]:
    blobs = blobs if blobs is not None else Blobs()
    body: dict[str, Any] = {
        "chat_id": request.chat_id,
        "agent": request.agent.id,
        "room_id": request.room_id,
        "sender": request.sender,
        "event_id": request.event_id,
        "text": request.text,
        "memory": list(request.memory),
    }
    if request.attachments:
        body["attachments"] = [contract_attachment(a, blobs) for a in request.attachments]
    if request.agent.send_history:
        body["history"] = [
            _history_entry(t.role, t.content, t.sender, t.attachments, blobs)
            for t in request.history
        ]
    return body


def _history_entry(
    role: str, content: str, sender: str, attachments: tuple[Attachment, ...], blobs: Blobs
) -> dict[str, Any]:
    entry: dict[str, Any] = {"role": role, "content": content}
    if sender:
        entry["sender"] = sender
    files = [a for a in attachments if not a.inlined]
    if files:
        entry["attachments"] = [contract_attachment(a, blobs) for a in files]
    return entry
