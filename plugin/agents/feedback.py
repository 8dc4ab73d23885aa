"""A 👍 or 👎 on an answer, told to an `http` agent (see the contract in `http` and the README).

The other backends have no place to take it: for them it is counted in the metrics only.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from ..ops.settings import AgentSettings
from .base import post_json

UP = "up"
DOWN = "down"


def feedback_payload(
    agent: AgentSettings,
    chat_id: str,
    room_id: str,
    sender: str,
    event_id: str,
    reply_to: str,
    rating: str,
) -> dict[str, Any]:
    return {
        "type": "feedback",
        "chat_id": chat_id,
        "agent": agent.id,
        "room_id": room_id,
        "sender": sender,
        "event_id": event_id,
        "reply_to": reply_to,
        "rating": rating,
    }


async def send_feedback(
    http: aiohttp.ClientSession, agent: AgentSettings, body: dict[str, Any]
) -> None:
    """POSTs the feedback to an http agent's URL; raises BackendError when it fails."""
    if agent.backend != "http":
        return
    resp = await post_json(http, agent.url, body, dict(agent.headers))
    resp.release()
