"""A big deployment's web pages: `/status` and `/metrics` with 10,000 users x 6 rooms.

The real `StatusPages` on the real store (SQLite, real migrations), without maubot's web server:
the figure is the plugin's time to build each page (target: /status under 200 ms).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path

from mautrix.util.async_db import Database

from plugin.db import Store
from plugin.db.migrations import upgrade_table
from plugin.db.rows import ACTIVE, RoomRow
from plugin.ops.metrics import Metrics
from plugin.ops.web import StatusPages
from tests.config import settings

USERS = 10_000
ROOMS_PER_USER = 6
RUNS = 20


def room(user: int, n: int) -> RoomRow:
    return RoomRow(
        room_id=f"!room{user}_{n}:bench",
        owner=f"@user{user}:bench",
        space_id=f"!space{user}:bench",
        agent_id=f"agent{n}",
        chat_id=f"chat{user}_{n}",
        title=f"Room {n} of user {user}",
        context_start=None,
        share_memory=True,
        state=ACTIVE,
        moved_to=None,
        last_event_id=None,
        last_event_ts=1_700_000_000_000,
        created_at=0,
    )


async def fill(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.users.upsert_unchanged_since(
            [(f"@user{u}:bench", f"!space{u}:bench") for u in range(USERS)], 0
        )
        rooms = [room(u, n) for u in range(USERS) for n in range(ROOMS_PER_USER)]
        await tx.rooms.upsert_unchanged_since(rooms, 0)


def busy_metrics() -> Metrics:
    metrics = Metrics()
    for n in range(ROOMS_PER_USER):
        for _ in range(1000):
            metrics.reply(f"agent{n}", 0.4)
        metrics.error("backend_timeout", "it did not answer in time", agent_id=f"agent{n}")
    for _ in range(100):
        metrics.message_in()
        metrics.message_out()
    return metrics


def timed(samples: list[float]) -> str:
    return f"p50 {statistics.median(samples):.1f} ms, max {max(samples):.1f} ms"


async def run() -> None:
    agents = [{"id": f"agent{n}", "backend": "echo"} for n in range(ROOMS_PER_USER)]
    current = settings({"agents": agents, "default_agent": "agent0", "web.token": "bench"})
    with tempfile.TemporaryDirectory() as tmp:
        db = Database.create(
            f"sqlite:{Path(tmp) / 'status.db'}",
            upgrade_table=upgrade_table,
            log=logging.getLogger("b"),
        )
        await db.start()
        try:
            store = Store(db)
            await fill(store)
            metrics = busy_metrics()
            pages = StatusPages(
                "@bot:bench",
                store,
                metrics,
                lambda: current,
                lambda: 0,
                lambda: None,
                lambda: "valid",
                lambda: None,
            )
            figures: dict[str, list[float]] = {"first page": [], "page 500": [], "search": []}
            for _ in range(RUNS):
                for name, kwargs in (
                    ("first page", {}),
                    ("page 500", {"page": 500}),
                    ("search", {"search": "user 4242"}),
                ):
                    started = time.perf_counter()
                    html = await pages.render_status(**kwargs)  # type: ignore[arg-type]
                    figures[name].append((time.perf_counter() - started) * 1000)
            body = metrics.render(0)
        finally:
            # An open connection's thread would keep the process from exiting.
            await db.stop()
    print(f"{USERS} users x {ROOMS_PER_USER} rooms ({USERS * ROOMS_PER_USER} rooms), SQLite")
    for name, samples in figures.items():
        print(f"/status {name}: {timed(samples)} over {RUNS} runs (target < 200 ms)")
    print(f"/status page size: {len(html) // 1024} KiB; /metrics: {len(body)} bytes")


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
