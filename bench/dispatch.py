"""Dispatch benchmarks: the plugin's own overhead per message, and throughput across rooms.

The real Dispatcher, ContextManager, Quota and Store (SQLite, real migrations) run in-process; the
homeserver is a fake client that answers at once, and the agent is a zero-latency backend that
notes when the request reaches it. So the figures are the plugin's cost, not Matrix's or an agent's.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from plugin import dispatch
from plugin.backends.base import AgentRequest
from plugin.db import RoomRow
from tests.fakes.plugin_parts import Parts, make_event, make_parts, room_row

MANAGED_ROOMS = 1000
OVERHEAD_MESSAGES = 2000
THROUGHPUT_ROOMS = 100
THROUGHPUT_PER_ROOM = 10


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


async def _parts(path: Path, backend: ZeroLatencyBackend, rooms: int) -> tuple[Parts, list[str]]:
    dispatch.backend_for = lambda agent, http: backend  # type: ignore[assignment]
    parts = await make_parts(path)
    room_ids = [f"!bench{n}:example.org" for n in range(rooms)]
    rows: list[RoomRow] = [
        room_row(room_id, owner=f"@user{n}:example.org") for n, room_id in enumerate(room_ids)
    ]
    await parts.store.apply_reconciliation(rows, [(r.owner, r.space_id) for r in rows])
    return parts, room_ids


async def _drained(parts: Parts, expected_sent: int) -> None:
    # Polling keeps the fake client plain; the overhead figure does not depend on it.
    while len(parts.client.sent) < expected_sent or parts.dispatcher.queue_depth():  # noqa: ASYNC110
        await asyncio.sleep(0.0005)


async def bench_overhead(tmp: Path) -> dict[str, float]:
    """Event in (the live handler is called) to backend request out, one message at a time."""
    backend = ZeroLatencyBackend()
    parts, room_ids = await _parts(tmp / "overhead.db", backend, MANAGED_ROOMS)
    samples: list[float] = []
    try:
        for n in range(OVERHEAD_MESSAGES):
            room_id = room_ids[(n * 7919) % MANAGED_ROOMS]
            evt = make_event(room_id, f"message {n}", sender=_owner(room_ids, room_id))
            started = time.perf_counter()
            await parts.dispatcher.on_message(evt)
            await _drained(parts, n + 1)
            samples.append((backend.arrived[evt.event_id] - started) * 1000)
    finally:
        await parts.close()
    return {
        "p50_ms": statistics.median(samples),
        "p99_ms": percentile(samples, 99),
        "mean_ms": statistics.fmean(samples),
        "messages": len(samples),
    }


async def bench_throughput(tmp: Path) -> dict[str, float]:
    """Many messages queued at once across 100 rooms; answered per second."""
    backend = ZeroLatencyBackend()
    parts, room_ids = await _parts(tmp / "throughput.db", backend, THROUGHPUT_ROOMS)
    events = [
        make_event(room_id, f"message {n}", sender=_owner(room_ids, room_id))
        for n in range(THROUGHPUT_PER_ROOM)
        for room_id in room_ids
    ]
    try:
        started = time.perf_counter()
        for evt in events:
            await parts.dispatcher.on_message(evt)
        await _drained(parts, len(events))
        elapsed = time.perf_counter() - started
        answered = len(parts.client.final_texts(room_ids[0]))
    finally:
        await parts.close()
    return {
        "messages": len(events),
        "seconds": elapsed,
        "per_second": len(events) / elapsed,
        "answered_in_first_room": answered,
    }


def _owner(room_ids: list[str], room_id: str) -> str:
    return f"@user{room_ids.index(room_id)}:example.org"


async def run() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        overhead = await bench_overhead(Path(tmp))
        print(
            f"overhead per message (event in -> backend request out), {MANAGED_ROOMS} managed "
            f"rooms, {overhead['messages']} messages: p50 {overhead['p50_ms']:.2f} ms, "
            f"p99 {overhead['p99_ms']:.2f} ms, mean {overhead['mean_ms']:.2f} ms "
            "(target p50 <= 5 ms, p99 <= 25 ms)"
        )
        throughput = await bench_throughput(Path(tmp))
        print(
            f"throughput, {THROUGHPUT_ROOMS} rooms, zero-latency backend: "
            f"{throughput['messages']} messages in {throughput['seconds']:.2f} s = "
            f"{throughput['per_second']:.0f} messages/s (target >= 200 messages/s)"
        )


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
