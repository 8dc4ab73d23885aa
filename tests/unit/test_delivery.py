"""The delivery state under crashes: the process dies between any two writes (a DB transaction
or a Matrix send), and the next start loses nothing and answers nothing twice.

A crash is simulated as a SIGKILL would leave things: the write that was about to happen does
not, nothing else runs (no failure notice, no cleanup), and what the DB and the homeserver hold
is what the next start finds.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from plugin.conversation.queues import RoomQueues
from plugin.db import Store
from plugin.db.rows import NewTurn
from plugin.matrix.replies import STREAMING_KEY, resolve
from tests.fakes.matrix import FakeMatrix
from tests.fakes.world import ScriptedAgent, World, make_world, script_agent

CONFIG = {"dispatch.edit_interval": 0.0, "limits.messages_per_minute": 0}
# Long enough for an answer of several parts, each a reply of its own.
LONG = " ".join(f"word{n}" for n in range(4000))
TEXTS = ["first", "second", "third"]


class Crash(BaseException):
    """The process died. A BaseException, so that no `except Exception` handles it."""


class CrashAt:
    """Counts the writes, and kills the process at the `at`-th one (never when `at` is None)."""

    def __init__(self, at: int | None) -> None:
        self.at = at
        self.count = 0
        self.dead = False

    def write(self, what: str) -> None:
        if self.dead:
            raise Crash(f"after death: {what}")
        self.count += 1
        if self.count == self.at:
            self.dead = True
            raise Crash(what)


@pytest.fixture(autouse=True)
async def deaths_are_expected() -> AsyncIterator[None]:
    """Background writes (the group commit's flushes) die with the simulated process, and nobody
    is left to read their error, as after a real SIGKILL: that is the test, not news to log."""
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), Crash):
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    yield
    # The dead flushes are reported when they are collected: here, while the handler is set.
    gc.collect()
    loop.set_exception_handler(previous)


def instrument(monkeypatch: pytest.MonkeyPatch, fake: FakeMatrix, crash: CrashAt) -> None:
    send = fake.request

    async def request(method: Any, path: Any, body: dict[str, Any]) -> dict[str, Any]:
        crash.write(f"Matrix {path}")
        return await send(method, path, body)

    fake.request = request  # type: ignore[method-assign]
    transaction = Store.transaction

    @asynccontextmanager
    async def dying_transaction(self: Store) -> AsyncIterator[Store]:
        async with transaction(self) as tx:
            yield tx
            # Dying here, before the commit, rolls the transaction back.
            crash.write("DB commit")

    monkeypatch.setattr(Store, "transaction", dying_transaction)


async def run_until_done_or_dead(world: World, room_id: str, crash: CrashAt) -> None:
    # The user sends all three, whether or not the bot is alive to see them.
    events = [world.fake.message(room_id, text) for text in TEXTS]
    try:
        for evt in events:
            await world.parts.intake.on_message(evt)
        deadline = asyncio.get_running_loop().time() + 10
        while world.parts.queues.busy() and not crash.dead:
            assert asyncio.get_running_loop().time() < deadline, "the answers never finished"
            await asyncio.sleep(0.01)
    except Crash:
        pass
    # SIGKILL: the workers stop where they are; nothing of stop() runs that writes.
    await world.parts.queues.stop()


def replies_by_message(fake: FakeMatrix, room_id: str) -> dict[str, Any]:
    history = list(reversed(fake.history.get(room_id, [])))
    return resolve(history, fake.mxid)


async def crash_and_restart(
    store: Store, monkeypatch: pytest.MonkeyPatch, backend: ScriptedAgent, at: int | None
) -> tuple[FakeMatrix, str, int]:
    fake = FakeMatrix()
    room_id = f"!crash{at}:example.org"
    crash = CrashAt(at)
    instrument(monkeypatch, fake, crash)
    world = make_world(store, overrides=CONFIG, fake=fake)
    await world.add_room(room_id)
    await run_until_done_or_dead(world, room_id, crash)
    writes = crash.count
    # The next start, on what the DB and the homeserver hold now.
    crash.at, crash.dead = None, False
    again = make_world(store, overrides=CONFIG, fake=fake)
    await again.parts.startup.catch_up.run()
    await again.settle(timeout=10)
    await again.close()
    return fake, room_id, writes


async def test_a_crash_between_any_two_writes_loses_nothing_and_answers_nothing_twice(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = script_agent(monkeypatch)
    backend.extra, backend.chunks = LONG, 6
    fake, room_id, writes = await crash_and_restart(store, monkeypatch, backend, None)
    assert writes > 10, "the run without a crash counts the writes to crash at"
    counts = {len(r) for r in replies_by_message(fake, room_id).replies.values()}
    assert len(counts) == 1 and min(counts) > 2, "a long answer comes in parts"
    parts = counts.pop()

    for at in range(1, writes + 1):
        fake, room_id, _ = await crash_and_restart(store, monkeypatch, backend, at)
        timeline = replies_by_message(fake, room_id)
        users = [e for e in reversed(fake.history[room_id]) if e["sender"] != fake.mxid]
        assert [e["content"]["body"] for e in users] == TEXTS
        for event in users:
            event_id, text = event["event_id"], event["content"]["body"]
            replies = timeline.replies.get(event_id, [])
            assert timeline.answered(event_id), f"crash at write {at}: {text!r} lost"
            assert timeline.answer_text(event_id) == f"re: {text}{LONG}", (at, text)
            # One answer: its parts, each final; nothing half-written is left streaming.
            assert all(not r.content.get(STREAMING_KEY) for r in replies), (at, text)
            assert len(replies) == parts, (at, text, len(replies))
            row = await store.messages.get(event_id)
            assert row is not None and row.state == "answered", (at, text)
        # In order: each message's answer is complete before the next one's begins.
        answered_in = [r.event_id for e in users for r in timeline.replies[e["event_id"]]]
        sends = [s.event_id for s in fake.messages(room_id) if "m.new_content" not in s.content]
        assert [s for s in sends if s in answered_in] == answered_in, at


async def test_a_start_cut_short_after_its_catch_up_loses_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bot dies mid-answer; the next start queues the answer again and moves the room's
    cursor past the interrupted reply, then dies before answering; the start after that still
    takes the interrupted reply over."""
    backend = script_agent(monkeypatch)
    backend.extra, backend.chunks, backend.gap = LONG, 6, 0.01
    fake = FakeMatrix()
    room_id = "!cut-short:example.org"
    crash = CrashAt(None)
    instrument(monkeypatch, fake, crash)
    world = make_world(store, overrides=CONFIG, fake=fake)
    await world.add_room(room_id)
    # An exchange before: the room's context is in the DB, so no start rebuilds it.
    await store.turns.add_answered(
        room_id, [NewTurn("$before", "user", "hi"), NewTurn(None, "assistant", "hello")]
    )
    evt = fake.message(room_id, "first")
    await world.parts.intake.on_message(evt)
    while not fake.messages(room_id):  # noqa: ASYNC110 (the fake has no event to wait on)
        await asyncio.sleep(0.01)
    await world.parts.queues.stop()

    cut_short = make_world(store, overrides=CONFIG, fake=fake)
    with monkeypatch.context() as dying:
        # The jobs it queues never run: the process dies right after its catch-up.
        dying.setattr(RoomQueues, "enqueue_first", lambda self, room, jobs: None)
        await cut_short.parts.startup.catch_up.run()
        await cut_short.parts.intake.delivery.drain()
    assert (await store.rooms.get(room_id)).last_event_id != evt.event_id  # type: ignore[union-attr]

    again = make_world(store, overrides=CONFIG, fake=fake)
    await again.parts.startup.catch_up.run()
    await again.settle(timeout=10)
    await again.close()

    timeline = replies_by_message(fake, room_id)
    replies = timeline.replies[evt.event_id]
    assert timeline.answer_text(evt.event_id) == f"re: first{LONG}"
    assert all(not r.content.get(STREAMING_KEY) for r in replies), "nothing left half-written"
    counts = {len(r) for r in timeline.replies.values()}
    assert counts == {len(replies)} and len(replies) > 2, "one answer, in its parts"
