"""Reading one room's timeline back from its newest event, page by page.

Messages and encrypted events both: in an encrypted room every message is an m.room.encrypted
event, decrypted afterwards (`encryption.decrypt_timeline`).
"""

from __future__ import annotations

import json
from typing import Any

from maubot.matrix import MaubotMatrixClient
from mautrix.api import Method, Path
from mautrix.types import PaginationDirection

PAGE_SIZE = 100
# Stickers are events of their own type, and go to the agent like images; encrypted events are
# decrypted by the caller (`matrix.encryption`).
_MESSAGES = json.dumps({"types": ["m.room.message", "m.room.encrypted", "m.sticker"]})


async def walk_back(
    client: MaubotMatrixClient,
    room_id: str,
    stop_at: set[str],
    since_ts: int,
    max_events: int,
) -> list[dict[str, Any]]:
    """Messages, oldest first, from the newest back to the first of `stop_at` (excluded, unless
    the walk goes on past it to `since_ts` when that is older); without `stop_at`, back to
    `since_ts` (0: as far as `max_events`)."""
    collected: list[dict[str, Any]] = []
    reached = not stop_at
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
            reached = reached or ev.get("event_id") in stop_at
            older = ev.get("origin_server_ts", 0) < since_ts
            if reached and (older or (since_ts == 0 and bool(stop_at))):
                return collected[::-1]
            collected.append(ev)
        token = resp.get("end")
        if not chunk or not token:
            break
    return collected[::-1]
