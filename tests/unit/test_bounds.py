"""Everything is bounded, with config keys: rooms per user, memory entries and their length, an
answer's size, and the messages waiting in one room. A limit reached is told, never silent."""

from __future__ import annotations

import pytest

from plugin.conversation.agent_call import cut_note
from plugin.conversation.quota import Quota
from plugin.conversation.refusals import Refusals
from plugin.ops.locks import KeyedLocks
from plugin.ops.throttle import PRUNE_AT, Throttle
from tests.config import settings
from tests.fakes.matrix import ALICE
from tests.fakes.world import World, script_agent

ROOM = "!room:example.org"
# A room the bot shares with the user that is not a working room.
CONTROL = "!control:example.org"


def replies(world: World, room_id: str) -> list[str]:
    return [s.content["body"] for s in world.fake.messages(room_id)]


async def test_rooms_per_user(world: World) -> None:
    world.configure({"limits.rooms_per_user": 2})
    for n in range(3):
        await world.command(CONTROL, f"new echo Room {n}")

    *made, refused = replies(world, CONTROL)
    assert len(made) == 2 and all(text.startswith("New room with Echo") for text in made)
    assert "You have 2 working rooms, and one user may have 2 here" in refused
    assert len(await world.store.rooms.of_owner(ALICE)) == 2


async def test_memory_entries_and_their_length(world: World) -> None:
    world.configure({"limits.memory_entries": 2, "limits.memory_entry_chars": 10})
    await world.command(CONTROL, "remember this is far too long")
    for n in range(3):
        await world.command(CONTROL, f"remember fact {n}")

    too_long, first, second, full = replies(world, CONTROL)
    assert "keep it to 10 at most" in too_long
    assert first.startswith("Remembered as entry 1") and second.startswith("Remembered as entry 2")
    assert "Your shared memory is full (2 entries)" in full
    assert [m.content for m in await world.store.memory.of_user(ALICE)] == ["fact 0", "fact 1"]


async def test_an_answer_past_its_size_is_cut_with_a_note(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = script_agent(monkeypatch)
    backend.extra, backend.chunks = "x" * 5000, 7
    world.configure({"limits.answer_chars": 1000})
    await world.add_room(ROOM)

    evt = await world.say(ROOM, "go on")
    await world.settle()

    answer = world.fake.final_texts(ROOM)[evt.event_id]
    assert answer == ("re: go on" + "x" * 5000)[:1000] + cut_note(1000)
    (turn,) = [t for t in await world.store.turns.of_room(ROOM) if t.role == "assistant"]
    assert turn.content == answer, "the context holds what the user saw"


async def test_messages_waiting_in_one_room(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = script_agent(monkeypatch)
    backend.gap = 0.2
    world.configure({"limits.pending_per_room": 2})
    await world.add_room(ROOM)

    events = [await world.say(ROOM, f"m{n}") for n in range(4)]
    await world.settle()

    assert backend.texts == ["m0", "m1"]
    texts = world.fake.final_texts(ROOM)
    assert (
        "2 messages here are still waiting for an answer, so these 2 messages"
        in texts[events[2].event_id]
    )
    for evt in events:
        row = await world.store.messages.get(evt.event_id)
        assert row is not None and row.state == "answered", "told, so none is left pending"


async def test_in_memory_maps_are_pruned(world: World) -> None:
    throttle = Throttle(60)
    for n in range(PRUNE_AT + 10):
        throttle.allow(n, now=n * 100.0)
    assert len(throttle) < PRUNE_AT, "keys whose interval is over are forgotten"

    locks = KeyedLocks()
    async with locks.hold("a"), locks.hold("b"):
        assert len(locks) == 2
    assert len(locks) == 0, "a lock nobody holds or waits for is forgotten"

    quota = Quota(world.store, lambda: settings({"limits.messages_per_minute": 1}))
    for n in range(1100):
        quota.admit_message(f"@user{n}:example.org", 0.0)
    assert quota.tracked_users() < 1100, "users with no recent message are forgotten"

    refusals = Refusals(world.parts.outbox, world.store)
    assert len(refusals) == 0
