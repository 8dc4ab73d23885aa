"""Per-user limits: messages per minute (at each message's send time), estimated tokens per day,
and one notice per room and burst that counts what it refused."""

from __future__ import annotations

import time
from typing import Any

import pytest

from plugin.conversation import quota, refusals
from plugin.conversation.quota import WINDOW, Quota
from plugin.db import Store
from plugin.matrix.replies import COVERS_KEY
from tests.config import settings
from tests.fakes.matrix import ALICE
from tests.fakes.world import World, script_agent

ROOM = "!room:example.org"
BOB = "@bob:example.org"


def quota_of(store: Store, **limits: int) -> Quota:
    current = settings({f"limits.{key}": value for key, value in limits.items()})
    return Quota(store, lambda: current)


class Clock:
    """The monotonic clock of the refusal notices, moved by hand; the date is real."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def stop_the_clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(refusals, "time", clock)
    return clock


async def test_messages_per_minute_is_a_sliding_window_per_user(store: Store) -> None:
    limits = quota_of(store, messages_per_minute=2)

    assert [limits.admit_message(ALICE, t) for t in (0, 10, 20, 59.9)] == [True, True, False, False]
    assert limits.admit_message(BOB, 20), "each user has a window of their own"
    # The first message leaves the window a minute after it arrived; refused ones never count.
    assert limits.admit_message(ALICE, WINDOW)
    assert not limits.admit_message(ALICE, WINDOW + 1)
    assert limits.admit_message(ALICE, WINDOW + 10)


async def test_a_backlog_counts_at_the_time_it_was_sent(store: Store) -> None:
    limits = quota_of(store, messages_per_minute=2)

    # Sent while the bot was down, a minute apart each, and counted after the start: all fit.
    assert all(limits.admit_message(ALICE, t) for t in (0, 60, 120, 180))
    # Counted out of order (a live message first, the backlog after): each at its own time.
    assert limits.admit_message(BOB, 500) and limits.admit_message(BOB, 100)
    assert limits.admit_message(BOB, 130) and not limits.admit_message(BOB, 140)


async def test_zero_turns_the_limits_off(store: Store) -> None:
    limits = quota_of(store, messages_per_minute=0, daily_tokens=0)
    await store.usage.add(ALICE, quota.today(), 1, 10**9)

    assert all(limits.admit_message(ALICE, 0) for _ in range(100))
    assert not await limits.tokens_exhausted(ALICE)


async def test_daily_tokens_add_up_per_user_and_day(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits = quota_of(store, daily_tokens=100)

    assert not await limits.tokens_exhausted(ALICE)
    await store.usage.add(ALICE, quota.today(), 1, 60)
    assert not await limits.tokens_exhausted(ALICE)
    await store.usage.add(ALICE, quota.today(), 1, 40)
    assert await limits.tokens_exhausted(ALICE)
    assert not await limits.tokens_exhausted(BOB)
    usage = await store.usage.get(ALICE, quota.today())
    assert usage is not None and (usage.messages, usage.tokens) == (2, 100)

    monkeypatch.setattr(quota, "today", lambda: "2999-01-01")
    assert not await limits.tokens_exhausted(ALICE), "a new day starts from zero"


def notices(world: World) -> list[str]:
    """The bot's notices in the room, each with its edits applied."""
    texts: dict[str, str] = {}
    for sent in world.fake.messages(ROOM):
        content = sent.content
        if content["msgtype"] != "m.notice":
            continue
        relation = content.get("m.relates_to") or {}
        if relation.get("rel_type") == "m.replace":
            texts[relation["event_id"]] = content["m.new_content"]["body"]
        else:
            texts[sent.event_id] = content["body"]
    return list(texts.values())


async def test_over_the_minute_limit_the_owner_is_told_once_per_interval(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = script_agent(monkeypatch)
    clock = stop_the_clock(monkeypatch)
    world.configure({"limits.messages_per_minute": 1})
    await world.add_room(ROOM)

    refused = []
    for n in range(3):
        evt = await world.say(ROOM, f"first minute {n}")
        refused.append(evt.event_id)
    await world.settle()
    clock.now += WINDOW
    for n in range(2):
        await world.say(ROOM, f"second minute {n}", age=-WINDOW)
    await world.settle()

    assert backend.texts == ["first minute 0", "second minute 0"]
    first, second = notices(world)
    assert "more than 1 messages in a minute, so these 2 messages did not go" in first
    assert "so this message did not go" in second, "a new notice in each minute"
    edits = [s.content for s in world.fake.messages(ROOM) if "m.new_content" in s.content]
    assert edits[-1]["m.new_content"][COVERS_KEY] == refused[1:]
    # Refused messages stay out of the context: sending them again is how to get an answer.
    turns = await world.store.turns.of_room(ROOM)
    assert [t.content for t in turns if t.role == "user"] == ["first minute 0", "second minute 0"]


async def test_over_the_daily_tokens_messages_are_kept_for_a_retry_tomorrow(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = script_agent(monkeypatch)
    world.configure({"limits.daily_tokens": 5})
    await world.add_room(ROOM)

    await world.say(ROOM, "a message of a few tokens")
    kept = await world.say(ROOM, "over the limit now")
    last = await world.say(ROOM, "and another one")
    await world.settle()

    (notice,) = notices(world)
    assert "today's allowance of 5 tokens, so these 2 messages" in notice
    assert "`!ai retry` tomorrow" in notice
    assert backend.texts == ["a message of a few tokens"]

    monkeypatch.setattr(quota, "today", lambda: "2999-01-01")
    await world.command(ROOM, "retry")
    await world.settle()

    assert backend.texts[-1] == "and another one"
    assert world.fake.final_texts(ROOM)[last.event_id] == "re: and another one"
    turn = await world.store.turns.for_event(ROOM, kept.event_id)
    assert turn is not None and not turn.answered, "kept for the next retry"
