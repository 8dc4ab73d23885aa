"""The message path in-process: filters, order, parallelism, streaming edits, failures, quotas."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from plugin.agents.base import BackendServerError
from plugin.conversation import typing
from plugin.matrix.replies import CONTINUED_KEY, COVERS_KEY, STREAMING_KEY, resolve
from tests.fakes.world import ScriptedAgent, World, make_world, script_agent

ROOM = "!room:example.org"
OTHER = "!other:example.org"
AGENTS = [
    {"id": "echo", "name": "Echo", "backend": "echo"},
    {"id": "slow", "name": "Slow", "backend": "echo"},
]
CONFIG = {"agents": AGENTS, "dispatch.edit_interval": 0.0}


async def prepare(world: World, monkeypatch: pytest.MonkeyPatch) -> ScriptedAgent:
    """Two working rooms with a scripted agent each."""
    backend = script_agent(monkeypatch)
    world.configure(CONFIG)
    await world.add_room(ROOM)
    await world.add_room(OTHER, agent_id="slow")
    return backend


def contents(world: World, room_id: str = ROOM) -> list[dict[str, Any]]:
    return [s.content for s in world.fake.messages(room_id)]


async def test_filters_commands_notices_edits_others_and_the_bots_own(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await prepare(world, monkeypatch)
    fake = world.fake
    ignored = [
        fake.message(ROOM, "!ai help"),
        fake.message(ROOM, "a notice", msgtype="m.notice"),
        fake.message(ROOM, "* fixed", relates_to={"rel_type": "m.replace", "event_id": "$x"}),
        fake.message(ROOM, "hi", sender="@mallory:example.org"),
        fake.message(ROOM, "my own", sender=fake.mxid),
        fake.message("!unmanaged:example.org", "hi"),
    ]
    for evt in ignored:
        await world.parts.intake.on_message(evt)
    await world.say(ROOM, "!aiden is not a command")
    await world.settle()

    assert [c["body"] for c in contents(world)] == ["re: !aiden is not a command"]


async def test_admin_may_talk_in_any_room(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = await prepare(world, monkeypatch)
    world.configure({**CONFIG, "access.admins": ["@root:example.org"]})

    await world.say(ROOM, "from the admin", sender="@root:example.org")
    await world.settle()
    await world.store.rooms.set_state(ROOM, "archived")
    await world.say(ROOM, "in an archived room")
    await world.settle()

    assert backend.texts == ["from the admin"]


async def test_an_event_is_answered_once(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = await prepare(world, monkeypatch)
    evt = world.fake.message(ROOM, "hello")

    await world.parts.intake.on_message(evt)
    await world.parts.intake.on_message(evt)
    await world.settle()
    await world.parts.intake.on_message(evt)
    await world.settle()

    assert len(backend.calls) == 1
    assert world.fake.final_texts(ROOM) == {evt.event_id: "re: hello"}
    row = await world.store.messages.get(evt.event_id)
    assert row is not None and row.state == "answered"
    # The room's cursor is the newest event the bot knows of: its answer.
    room = await world.room(ROOM)
    assert room.last_event_id == world.fake.messages(ROOM)[-1].event_id
    assert world.metrics.messages_in == 1
    assert world.metrics.messages_out == 1


async def test_one_room_is_fifo_and_rooms_run_in_parallel(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    backend.gap = 0.05
    fake = world.fake
    events = [fake.message(ROOM, f"m{n}") for n in range(5)]
    events.append(fake.message(OTHER, "other"))

    await asyncio.gather(*(world.parts.intake.on_message(evt) for evt in events))
    await world.settle()

    room_calls = [c for c in backend.calls if c.room_id == ROOM]
    assert [c.text for c in room_calls] == [f"m{n}" for n in range(5)]
    assert backend.max_active == 2
    texts = fake.final_texts(ROOM)
    assert [texts[evt.event_id] for evt in events[:5]] == [f"re: m{n}" for n in range(5)]
    # Each message saw the ones before it and their answers.
    assert len(room_calls[4].history) == 8


async def test_global_concurrency_limit(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = await prepare(world, monkeypatch)
    world.configure({**CONFIG, "dispatch.max_concurrency": 2})
    backend.gap = 0.05
    rooms = [f"!r{n}:example.org" for n in range(6)]
    for room_id in rooms:
        await world.add_room(room_id)

    for room_id in rooms:
        await world.say(room_id, "hi")
    assert world.parts.queues.depth() == 6
    await world.settle()

    assert backend.max_active == 2
    assert len(backend.calls) == 6


async def test_streaming_edits_are_bounded_then_one_final_edit(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    world.configure({**CONFIG, "dispatch.edit_interval": 0.05, "dispatch.max_edits": 3})
    backend.chunks, backend.gap = 12, 0.03

    evt = await world.say(ROOM, "tell me a **long** story")
    await world.settle()

    first, *edits = contents(world)
    assert first[STREAMING_KEY] is True
    assert first["m.relates_to"] == {"m.in_reply_to": {"event_id": evt.event_id}}
    *intermediate, final = edits
    assert 1 <= len(intermediate) <= 3
    for edit in intermediate:
        assert edit[STREAMING_KEY] is True and edit["m.new_content"][STREAMING_KEY] is True
    assert STREAMING_KEY not in final and STREAMING_KEY not in final["m.new_content"]
    assert final["m.new_content"]["body"] == "re: tell me a **long** story"
    assert final["m.new_content"]["formatted_body"] == (
        "<p>re: tell me a <strong>long</strong> story</p>"
    )
    assert final["m.relates_to"]["rel_type"] == "m.replace"
    assert world.fake.typing == [], "an answer within a second needs no typing notice"


async def test_an_answer_done_while_its_first_message_is_sent_edits_that_message(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The homeserver takes its time with the first streamed message, and the agent finishes
    meanwhile: the answer is still one message and its edits, not a second reply."""
    backend = await prepare(world, monkeypatch)
    backend.chunks = 3
    send = world.fake.request

    async def slow_first_message(method: Any, path: Any, body: dict[str, Any]) -> dict[str, Any]:
        if body.get(STREAMING_KEY) and "m.new_content" not in body:
            await asyncio.sleep(0.3)
        return await send(method, path, body)

    monkeypatch.setattr(world.fake, "request", slow_first_message)

    evt = await world.say(ROOM, "hello there")
    await world.settle()

    first, *edits = contents(world)
    assert first[STREAMING_KEY] is True
    assert [edit["m.relates_to"]["rel_type"] for edit in edits] == ["m.replace"] * len(edits)
    assert edits and STREAMING_KEY not in edits[-1]["m.new_content"]
    assert world.fake.final_texts(ROOM) == {evt.event_id: "re: hello there"}


async def test_a_long_answer_streamed_to_a_slow_homeserver_comes_in_order(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deltas keep coming while each send waits for the homeserver, so several parts fill up
    between two sends: they still reach the room once each, in order, and end final."""
    backend = await prepare(world, monkeypatch)
    world.configure({**CONFIG, "dispatch.edit_interval": 0.2})
    backend.extra = "".join(f"Paragraph {n}: {'all work and no play ' * 20}\n\n" for n in range(95))
    backend.chunks, backend.gap = 80, 0.01
    send = world.fake.request

    async def slow(method: Any, path: Any, body: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.1)
        return await send(method, path, body)

    monkeypatch.setattr(world.fake, "request", slow)

    evt = await world.say(ROOM, "tell me everything")
    await world.settle(timeout=30)

    timeline = resolve(list(reversed(world.fake.history[ROOM])), world.fake.mxid)
    parts = timeline.replies[evt.event_id]
    assert len(parts) > 2 and all(not part.content.get(STREAMING_KEY) for part in parts)
    assert [bool(part.content.get(CONTINUED_KEY)) for part in parts] == [True] * (
        len(parts) - 1
    ) + [False]
    assert timeline.answer_text(evt.event_id) == "re: tell me everything" + backend.extra


async def test_a_slow_answer_shows_typing_until_it_is_done(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    monkeypatch.setattr(typing, "TYPING_DELAY", 0.05)
    backend.gap = 0.2

    await world.say(ROOM, "think hard")
    await world.settle()

    assert world.fake.typing[0][1] > 0 and world.fake.typing[-1] == (ROOM, 0)


async def test_a_quick_answer_is_one_message_and_stays_in_its_thread(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await prepare(world, monkeypatch)
    world.configure({**CONFIG, "dispatch.edit_interval": 5.0})
    thread = {
        "rel_type": "m.thread",
        "event_id": "$root",
        "is_falling_back": True,
        "m.in_reply_to": {"event_id": "$root"},
    }

    evt = await world.say(ROOM, "in a thread", relates_to=thread)
    await world.settle()

    (only,) = contents(world)
    assert STREAMING_KEY not in only
    assert only["m.relates_to"] == {
        "rel_type": "m.thread",
        "event_id": "$root",
        "is_falling_back": False,
        "m.in_reply_to": {"event_id": evt.event_id},
    }


async def test_matrix_rate_limit_waits_retry_after_and_resends(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await prepare(world, monkeypatch)
    world.fake.rate_limited, world.fake.retry_after_ms = 2, 150
    started = time.monotonic()

    evt = await world.say(ROOM, "hello")
    await world.settle()

    assert time.monotonic() - started >= 0.3
    assert world.fake.rate_limit_hits == 2
    assert world.fake.final_texts(ROOM) == {evt.event_id: "re: hello"}


async def test_backend_failure_gives_one_notice_and_retry_answers(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    backend.fail = lambda n: BackendServerError(503) if n == 1 else None

    evt = await world.say(ROOM, "hello")
    await world.settle()

    (notice,) = contents(world)
    assert notice["msgtype"] == "m.notice"
    assert "HTTP 503" in notice["body"] and "`!ai retry`" in notice["body"]
    assert notice["m.relates_to"] == {"m.in_reply_to": {"event_id": evt.event_id}}
    (turn,) = await world.store.turns.of_room(ROOM)
    assert (turn.event_id, turn.answered) == (evt.event_id, False)
    assert world.metrics.errors_by_kind["backend_server_error"] == 1

    room = await world.room(ROOM)
    await world.parts.intake.retry(room, world.fake.message(ROOM, "!ai retry"))
    await world.settle()

    assert contents(world)[-1]["body"] == "re: hello"
    assert contents(world)[-1]["m.relates_to"] == {"m.in_reply_to": {"event_id": evt.event_id}}
    user, answer = await world.store.turns.of_room(ROOM)
    assert user.answered and answer.content == "re: hello"


async def test_failure_mid_stream_closes_the_partial_reply_with_the_notice(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    backend.chunks, backend.gap, backend.fail_after_chunks = 6, 0.02, 3
    backend.fail = lambda n: BackendServerError(500)

    await world.say(ROOM, "a long question")
    await world.settle()

    final = contents(world)[-1]
    assert STREAMING_KEY not in final["m.new_content"]
    assert final["m.new_content"]["body"].startswith("re: a long")
    assert "HTTP 500" in final["m.new_content"]["body"]


async def test_timeout_gives_a_notice(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = await prepare(world, monkeypatch)
    world.configure({**CONFIG, "dispatch.timeout": 1})
    backend.gap = 3

    await world.say(ROOM, "hello")
    await world.settle()

    (notice,) = contents(world)
    assert "did not answer within 1 s" in notice["body"]


async def test_retry_of_an_answered_message_replaces_its_answer(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    await world.say(ROOM, "one")
    await world.say(ROOM, "two")
    await world.settle()
    room = await world.room(ROOM)

    await world.parts.intake.retry(room, world.fake.message(ROOM, "!ai retry"))
    await world.settle()

    assert backend.calls[-1].text == "two"
    assert [t.content for t in backend.calls[-1].history] == ["one", "re: one"]
    assert [t.content for t in await world.store.turns.of_room(ROOM)] == [
        "one",
        "re: one",
        "two",
        "re: two",
    ]


async def test_messages_per_minute_quota(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = await prepare(world, monkeypatch)
    world.configure({**CONFIG, "limits.messages_per_minute": 2})

    for n in range(4):
        await world.say(ROOM, f"m{n}")
    await world.settle()

    assert backend.texts == ["m0", "m1"]
    notice, edit = [c for c in contents(world) if c["msgtype"] == "m.notice"]
    assert "more than 2 messages in a minute, so this message" in notice["body"]
    # One notice for the room, edited to count every refused message and to name them.
    assert edit["m.relates_to"]["rel_type"] == "m.replace"
    assert "so these 2 messages did not go" in edit["m.new_content"]["body"]
    assert len(edit["m.new_content"][COVERS_KEY]) == 2


async def test_daily_token_quota(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = await prepare(world, monkeypatch)
    world.configure({**CONFIG, "limits.daily_tokens": 5})

    await world.say(ROOM, "a message of a few tokens")
    await world.say(ROOM, "over the limit now")
    await world.settle()

    assert backend.texts == ["a message of a few tokens"]
    assert "today's allowance of 5 tokens" in contents(world)[-1]["body"]


async def test_stop_leaves_what_was_not_answered_to_the_next_start(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    backend.gap = 1
    events = [await world.say(ROOM, f"m{n}") for n in range(3)]
    await asyncio.sleep(0.05)

    await world.parts.intake.stop()
    late = await world.say(ROOM, "arrives while stopping")
    await world.parts.intake.delivery.drain()

    for evt in [*events, late]:
        row = await world.store.messages.get(evt.event_id)
        assert row is not None and row.state != "answered"
    # The next start answers them all, once and in order.
    backend.gap = 0
    again = make_world(world.store, overrides=CONFIG, fake=world.fake)
    await again.parts.startup.catch_up.run()
    await again.settle()
    await again.close()
    assert backend.texts[-4:] == ["m0", "m1", "m2", "arrives while stopping"]
    assert all(len(world.fake.final_texts(ROOM)) == 4 for _ in events)
