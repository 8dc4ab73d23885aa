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
