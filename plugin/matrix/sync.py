"""Reading many rooms at once: an initial /sync that the homeserver answers afresh."""

from __future__ import annotations

import json
import time
from typing import Any

from maubot.matrix import MaubotMatrixClient
from mautrix.api import Method, Path


async def fresh_initial_sync(
    client: MaubotMatrixClient, sync_filter: dict[str, Any], full_state: bool
) -> dict[str, Any]:
    """One /sync without a since token, answered from the server's current state.

    Synapse caches /sync answers by their parameters (two minutes by default), so the same
    request made again after a restart would get the old answer. The timeout is part of that
    cache key and means nothing to a sync without a since token, so it is varied.
    """
    return await client.api.request(
        Method.GET,
        Path.v3.sync,
        query_params={
            "filter": json.dumps(sync_filter),
            "full_state": "true" if full_state else "false",
            "timeout": str(time.time_ns() // 1_000_000 % 2**31),
        },
    )


async def latest_messages(client: MaubotMatrixClient, types: list[str]) -> dict[str, str]:
    """The id of the newest event of these types in every joined room, in one request."""
    sync_filter = {
        "room": {
            "timeline": {"limit": 1, "types": types},
            "state": {"types": []},
            "account_data": {"types": []},
            "ephemeral": {"types": []},
        },
        "presence": {"types": []},
        "account_data": {"types": []},
    }
    data = await fresh_initial_sync(client, sync_filter, full_state=False)
    latest = {}
    for room_id, room in ((data.get("rooms") or {}).get("join") or {}).items():
        events = (room.get("timeline") or {}).get("events") or []
        if events:
            latest[room_id] = events[-1].get("event_id")
    return latest
