"""Dispatch benchmarks: the plugin's own overhead per message, and throughput across rooms.

The real intake, queues, turn, context, quota and store (SQLite, real migrations) run
in-process; the homeserver is the tests' fake client, which answers at once, and the agent is a
zero-latency backend that notes when the request reaches it. So the figures are the plugin's
cost, not Matrix's or an agent's.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from mautrix.util.async_db import Database

from plugin.agents.base import AgentRequest
from plugin.conversation import agent_call
from plugin.db import Store
from plugin.db.migrations import upgrade_table
from tests.fakes.world import World, make_world, room_row

MANAGED_ROOMS = 1000
OVERHEAD_MESSAGES = 2000
THROUGHPUT_ROOMS = 100
THROUGHPUT_PER_ROOM = 10
CONFIG = {"limits.messages_per_minute": 0}


class ZeroLatencyBackend:
    """Answers at once; records when each request arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}

    async def reply(self, request: AgentRequest) -> AsyncIterator[str]:
        self.arrived[request.event_id] = time.perf_counter()
        yield f"re: {request.text}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def _world(path: Path, backend: ZeroLatencyBackend, rooms: int) -> tuple[World, list[str]]:
    agent_call.backend_for = lambda agent, http: backend  # type: ignore[assignment]
    db = Database.create(
        f"sqlite:{path}", upgrade_table=upgrade_table, log=logging.getLogger("bench.db")
    )
    await db.start()
    world = make_world(Store(db), overrides=CONFIG)
    room_ids = [f"!bench{n}:example.org" for n in range(rooms)]
    async with world.store.transaction() as tx:
        for n, room_id in enumerate(room_ids):
            await tx.rooms.upsert(room_row(room_id, owner=_owner(n)))
    return world, room_ids


async def _close(world: World) -> None:
    await world.close()
    await world.store.db.stop()  # type: ignore[union-attr]


async def _drained(world: World, expected_sent: int) -> None:
    # Polling keeps the fake client plain; the overhead figure does not depend on it.
    while len(world.fake.sent) < expected_sent or world.parts.queues.busy():  # noqa: ASYNC110
        await asyncio.sleep(0.0005)


async def bench_overhead(tmp: Path) -> dict[str, float]:
    """Event in (the live handler is called) to backend request out, one message at a time."""
    backend = ZeroLatencyBackend()
    world, room_ids = await _world(tmp / "overhead.db", backend, MANAGED_ROOMS)
    samples: list[float] = []
    try:
        for n in range(OVERHEAD_MESSAGES):
            index = (n * 7919) % MANAGED_ROOMS
            evt = world.fake.message(room_ids[index], f"message {n}", _owner(index))
            started = time.perf_counter()
            await world.parts.intake.on_message(evt)
            await _drained(world, n + 1)
            samples.append((backend.arrived[evt.event_id] - started) * 1000)
    finally:
        await _close(world)
    return {
        "p50_ms": statistics.median(samples),
        "p99_ms": percentile(samples, 99),
        "mean_ms": statistics.fmean(samples),
        "messages": len(samples),
    }


async def bench_throughput(tmp: Path) -> dict[str, float]:
    """Many messages queued at once across 100 rooms; answered per second."""
    backend = ZeroLatencyBackend()
    world, room_ids = await _world(tmp / "throughput.db", backend, THROUGHPUT_ROOMS)
    events = [
        world.fake.message(room_id, f"message {n}", _owner(index))
        for n in range(THROUGHPUT_PER_ROOM)
        for index, room_id in enumerate(room_ids)
    ]
    try:
        started = time.perf_counter()
        await asyncio.gather(*(world.parts.intake.on_message(evt) for evt in events))
        await _drained(world, len(events))
        elapsed = time.perf_counter() - started
        answered = len(world.fake.final_texts(room_ids[0]))
    finally:
        await _close(world)
    return {
        "messages": len(events),
        "seconds": elapsed,
        "per_second": len(events) / elapsed,
        "answered_in_first_room": answered,
    }


def _owner(index: int) -> str:
    return f"@user{index}:example.org"


async def run() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        overhead = await bench_overhead(Path(tmp))
        print(
            f"overhead per message (event in -> backend request out), {MANAGED_ROOMS} managed "
            f"rooms, {overhead['messages']} messages: p50 {overhead['p50_ms']:.2f} ms, "
            f"p99 {overhead['p99_ms']:.2f} ms, mean {overhead['mean_ms']:.2f} ms "
            "(target p50 <= 3 ms, p99 <= 10 ms)"
        )
        throughput = await bench_throughput(Path(tmp))
        print(
            f"throughput, {THROUGHPUT_ROOMS} rooms, zero-latency backend: "
            f"{throughput['messages']} messages in {throughput['seconds']:.2f} s = "
            f"{throughput['per_second']:.0f} messages/s "
            f"({throughput['answered_in_first_room']} answered in the first room)"
        )


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
