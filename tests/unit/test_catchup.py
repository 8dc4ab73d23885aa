"""The catch-up's decisions at start: what it answers, what it skips and tells the room, what the
timeline proves answered, and the context it rebuilds after the database was wiped."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from mautrix.errors import MatrixRequestError
from mautrix.types import MessageEvent

from plugin.db.rows import NewTurn
from plugin.startup import catchup
from plugin.startup.catchup import CatchUpReport
from tests.fakes.world import ScriptedAgent, World, script_agent

ROOM = "!room:example.org"
HOUR = 3600.0
LIMITS = {"catch_up.max_age_hours": 24, "catch_up.max_per_room": 20}


async def prepare(
    world: World, monkeypatch: pytest.MonkeyPatch, history_in_db: bool = True, **limits: int
) -> ScriptedAgent:
    """A working room with a scripted agent. With `history_in_db`, the room's context is in the
    database (a plain restart); without, the database lost it (a wiped database)."""
    backend = script_agent(monkeypatch)
    world.configure({**LIMITS, **{f"catch_up.{k}": v for k, v in limits.items()}})
    await world.add_room(ROOM)
    if history_in_db:
        await world.store.turns.add_answered(ROOM, [NewTurn("$earlier", "user", "earlier")])
    return backend


async def catch_up(world: World) -> CatchUpReport:
    """One catch-up, as a start runs it, and the answers it queued."""
    report = await world.parts.startup.catch_up.run()
    await world.settle()
    return report


def answer_to(world: World, evt: MessageEvent, body: str, age: float) -> MessageEvent:
    """An answer the bot gave before the restart: it is in the timeline, not in `fake.sent`."""
    return world.fake.message(
        ROOM,
        body,
        world.fake.mxid,
        relates_to={"m.in_reply_to": {"event_id": evt.event_id}},
        age=age,
    )


def notices(world: World) -> list[str]:
    return [s.content["body"] for s in world.fake.messages(ROOM) if "m.relates_to" not in s.content]


async def test_messages_sent_while_down_are_answered_once_oldest_first(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    first = world.fake.message(ROOM, "one", age=120)
    second = world.fake.message(ROOM, "two", age=60)

    report = await catch_up(world)

    assert (report.rooms_checked, report.answered, report.skipped) == (1, 2, 0)
    assert backend.texts == ["one", "two"]
    assert world.fake.final_texts(ROOM) == {first.event_id: "re: one", second.event_id: "re: two"}
    assert notices(world) == []
    # The cursor is the newest event the bot knows of: its last answer.
    room = await world.room(ROOM)
    assert room.last_event_id == world.fake.messages(ROOM)[-1].event_id

    again = await catch_up(world)

    assert (again.rooms_checked, again.answered) == (0, 0)
    assert len(backend.calls) == 2


async def test_only_the_owners_text_messages_are_answered(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    fake = world.fake
    fake.message(ROOM, "!ai rooms", age=50)
    fake.message(ROOM, "a notice", msgtype="m.notice", age=40)
    fake.message(ROOM, "not the owner", sender="@mallory:example.org", age=30)
    question = fake.message(ROOM, "the question", age=20)
    fake.message(
        ROOM, "* the question!", relates_to={"rel_type": "m.replace", "event_id": "$q"}, age=10
    )

    report = await catch_up(world)

    assert report.answered == 1
    assert backend.texts == ["the question"]
    assert list(fake.final_texts(ROOM)) == [question.event_id]


async def test_a_message_the_bot_replied_to_counts_as_answered(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    fake = world.fake
    answered = fake.message(ROOM, "answered before the restart", age=300)
    answer_to(world, answered, "re: answered before the restart", age=290)
    failed = fake.message(ROOM, "its agent failed", age=200)
    fake.message(
        ROOM,
        "⚠️ Echo failed",
        fake.mxid,
        msgtype="m.notice",
        relates_to={"m.in_reply_to": {"event_id": failed.event_id}},
        age=190,
    )
    pending = fake.message(ROOM, "still unanswered", age=100)

    report = await catch_up(world)

    assert report.answered == 1
    assert backend.texts == ["still unanswered"]
    assert list(fake.final_texts(ROOM)) == [pending.event_id]
    # The timeline's proof is written down, so that no later path answers them either.
    for evt in (answered, failed):
        row = await world.store.messages.get(evt.event_id)
        assert row is not None and row.state == "answered"
    again = await catch_up(world)
    assert again.answered == 0 and backend.texts == ["still unanswered"]


async def test_messages_behind_the_cursor_are_not_answered(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    old = world.fake.message(ROOM, "handled before the restart", age=100)
    await world.store.rooms.set_cursor(ROOM, old.event_id, old.timestamp)
    new = world.fake.message(ROOM, "sent while down", age=50)

    await catch_up(world)

    assert backend.texts == ["sent while down"]
    assert list(world.fake.final_texts(ROOM)) == [new.event_id]


async def test_over_the_per_room_cap_the_newest_are_answered_and_the_room_told_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch, max_per_room=2)
    for n in range(4):
        world.fake.message(ROOM, f"m{n}", age=100 - n)

    report = await catch_up(world)

    assert (report.answered, report.skipped) == (2, 2)
    assert backend.texts == ["m2", "m3"]
    (notice,) = notices(world)
    assert notice.startswith("While I was offline, 2 message(s) here were not answered")
    assert "2 beyond the 2 I answer per room" in notice

    again = await catch_up(world)

    assert (again.answered, again.skipped) == (0, 0)
    assert len(notices(world)) == 1, "the skipped messages are told once"


async def test_a_message_too_old_is_skipped_and_the_room_told(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch, max_age_hours=1)
    world.fake.message(ROOM, "sent two hours ago", age=2 * HOUR)
    world.fake.message(ROOM, "sent just now", age=1)

    report = await catch_up(world)

    assert backend.texts == ["sent just now"]
    assert report.skipped == 1
    (notice,) = notices(world)
    assert "1 message(s) here were not answered" in notice and "older than 1 h" in notice


async def test_a_wiped_database_skips_old_messages_with_one_notice(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch, history_in_db=False, max_age_hours=1)
    for n in range(2):
        world.fake.message(ROOM, f"old {n}", age=3 * HOUR - n)
    world.fake.message(ROOM, "fresh", age=1)

    report = await catch_up(world)

    assert (report.answered, report.skipped, report.rebuilt) == (1, 2, 1)
    assert backend.texts == ["fresh"]
    (notice,) = notices(world)
    assert "2 message(s) here were not answered" in notice and "older than 1 h" in notice
    # Skipped messages are not part of the rebuilt context either.
    assert [c.content for c in backend.calls[0].history] == []


async def test_a_wiped_database_gets_the_context_rebuilt_from_the_timeline(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch, history_in_db=False)
    fake = world.fake
    cleared = fake.message(ROOM, "before the last clear", age=500)
    answer_to(world, cleared, "re: before the last clear", age=490)
    command = fake.message(ROOM, "!ai context clear", age=450)
    room = await world.room(ROOM)
    await world.store.rooms.upsert(attrs.evolve(room, context_start=command.event_id))
    first = fake.message(ROOM, "one", age=400)
    streamed = answer_to(world, first, "re: o", age=390)
    fake.message(
        ROOM,
        "* re: one",
        fake.mxid,
        relates_to={"rel_type": "m.replace", "event_id": streamed.event_id},
        extra={"m.new_content": {"msgtype": "m.text", "body": "re: one"}},
        age=380,
    )
    fake.message(ROOM, "Context cleared.", fake.mxid, msgtype="m.notice", age=370)
    second = fake.message(ROOM, "two", age=300)
    answer_to(world, second, "re: two", age=290)
    pending = fake.message(ROOM, "three", age=100)

    report = await catch_up(world)

    assert (report.rebuilt, report.answered) == (1, 1)
    # The context since the clear, with the final text of the streamed answer.
    assert [(t.role, t.content) for t in backend.calls[0].history] == [
        ("user", "one"),
        ("assistant", "re: one"),
        ("user", "two"),
        ("assistant", "re: two"),
    ]
    assert list(fake.final_texts(ROOM)) == [pending.event_id]
    turns = await world.store.turns.of_room(ROOM)
    assert [t.content for t in turns] == ["one", "re: one", "two", "re: two", "three", "re: three"]
    assert all(t.answered for t in turns)


async def test_a_room_whose_last_message_is_handled_is_not_read(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    await world.say(ROOM, "answered live")
    await world.settle()
    requests = len(world.fake.api.paths)

    report = await catch_up(world)

    assert (report.rooms_checked, report.answered) == (0, 0)
    assert len(backend.calls) == 1
    # One /sync for the newest message of every room, and no room's timeline.
    assert len(world.fake.api.paths) == requests + 1
    assert not world.fake.api.paths[-1].endswith("/messages")


@pytest.mark.parametrize("cursor", [True, False], ids=["cursor", "no-cursor"])
async def test_a_message_recorded_live_does_not_hide_older_ones_sent_while_down(
    world: World, monkeypatch: pytest.MonkeyPatch, cursor: bool
) -> None:
    """The first /syncs after a start can bring a message before the catch-up runs: it is
    recorded as still to answer, and the walk still goes back to the cursor, past it."""
    backend = await prepare(world, monkeypatch)
    if cursor:
        old = world.fake.message(ROOM, "answered long ago", age=HOUR)
        answer_to(world, old, "re: answered long ago", age=HOUR - 1)
        await world.store.rooms.set_cursor(ROOM, old.event_id, old.timestamp)
    # A start: the rooms wait for the catch-up, which has not run yet.
    world.parts.queues.hold_all()
    world.parts.intake.start()
    world.fake.message(ROOM, "first", age=30)
    await world.say(ROOM, "second", age=20)
    await world.parts.intake.delivery.drain()
    world.fake.message(ROOM, "third", age=10)

    await catch_up(world)

    assert backend.texts == ["first", "second", "third"]


async def test_a_catch_up_that_fails_holds_nothing_and_hides_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The homeserver fails the catch-up's first request at start: live messages are answered
    all the same, and the cursor stays, so that the next start answers what came while the bot
    was down."""
    backend = await prepare(world, monkeypatch)
    old = world.fake.message(ROOM, "answered long ago", age=HOUR)
    answer_to(world, old, "re: answered long ago", age=HOUR - 1)
    await world.store.rooms.set_cursor(ROOM, old.event_id, old.timestamp)
    sync = catchup.latest_messages

    async def failing_sync(*args: Any, **kwargs: Any) -> dict[str, str]:
        raise MatrixRequestError(502, "Bad gateway")

    monkeypatch.setattr(catchup, "latest_messages", failing_sync)
    world.parts.queues.hold_all()
    world.parts.intake.start()
    down = world.fake.message(ROOM, "sent while down", age=60)
    with pytest.raises(MatrixRequestError):
        await world.parts.startup.catch_up.run()
    live = await world.say(ROOM, "sent live")
    await world.settle()

    assert backend.texts == ["sent live"]
    assert (await world.room(ROOM)).last_event_id == old.event_id

    monkeypatch.setattr(catchup, "latest_messages", sync)
    world.parts.queues.hold_all()
    world.parts.intake.start()
    await catch_up(world)

    assert backend.texts == ["sent live", "sent while down"]
    assert world.fake.final_texts(ROOM) == {
        down.event_id: "re: sent while down",
        live.event_id: "re: sent live",
    }
