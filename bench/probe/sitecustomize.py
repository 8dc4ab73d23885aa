"""Benchmark probe, loaded into the maubot process only (bench/encrypted.py puts this directory
first on maubot's PYTHONPATH and sets AGENTSPACES_PROBE_FILE). It wraps mautrix's Client.sync so
that, the moment a bot's /sync response has arrived in maubot, one line per room message, plain
or encrypted, is appended to that file: <bot mxid> TAB <event id> TAB <time.monotonic()>. This is
the "event in" point of "event in -> agent request out"; no plugin code changes.
"""

from __future__ import annotations

import os
import time
from typing import Any

_PATH = os.environ.get("AGENTSPACES_PROBE_FILE")
_TYPES = ("m.room.message", "m.room.encrypted")


def _install(path: str) -> None:
    from mautrix.client import Client

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    original = Client.sync

    def probed_sync(self: Client, *args: Any, **kwargs: Any) -> Any:
        awaitable = original(self, *args, **kwargs)

        async def timed() -> Any:
            data = await awaitable
            now = time.monotonic()
            lines = [
                f"{self.mxid}\t{ev.get('event_id')}\t{now:.6f}\n"
                for room in ((data or {}).get("rooms") or {}).get("join", {}).values()
                for ev in (room.get("timeline") or {}).get("events", [])
                if ev.get("type") in _TYPES
            ]
            if lines:
                os.write(fd, "".join(lines).encode())
            return data

        return timed()

    Client.sync = probed_sync  # type: ignore[method-assign]


if _PATH:
    _install(_PATH)
