"""Reading one room's timeline back from its newest event, page by page."""

from __future__ import annotations

import json
from typing import Any

from maubot.matrix import MaubotMatrixClient
from mautrix.api import Method, Path
from mautrix.types import PaginationDirection

PAGE_SIZE = 100
# Stickers are events of their own type, and go to the agent like images.
_MESSAGES = json.dumps({"types": ["m.room.message", "m.sticker"]})


async def walk_back(
    client: MaubotMatrixClient,
    room_id: str,
    stop_at: set[str],
    since_ts: int,
    max_events: int,
) -> list[dict[str, Any]]:
    """Messages from the newest back to the first of `stop_at` or `since_ts`, oldest first."""
    collected: list[dict[str, Any]] = []
    token: str | None = None
    while len(collected) < max_events:
        resp = await client.api.request(
            Method.GET,
            Path.v3.rooms[room_id].messages,
            query_params={
                "dir": PaginationDirection.BACKWARD.value,
                "limit": str(PAGE_SIZE),
                "filter": _MESSAGES,
                **({"from": token} if token else {}),
            },
        )
        chunk = resp.get("chunk") or []
        for ev in chunk:
            if ev.get("event_id") in stop_at or ev.get("origin_server_ts", 0) < since_ts:
                return collected[::-1]
            collected.append(ev)
        token = resp.get("end")
        if not chunk or not token:
            break
    return collected[::-1]
