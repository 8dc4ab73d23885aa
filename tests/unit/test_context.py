"""Context building: trimming, memory, new contexts and share flags, on a real SQLite store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from plugin.config import AgentSettings
from plugin.context import (
    MEMORY_HEADING,
    SUMMARY_PREFIX,
    chat_id_of,
    estimate_tokens,
    system_prompt,
    trim,
)
from plugin.db import TurnRow
from plugin.matrix_state import BINDING_TYPE, deterministic_chat_id
from tests.fakes.plugin_parts import Parts, make_parts, room_row

ROOM = "!room:example.org"


def agent(limit: int = 8000, prompt: str = "Be brief.") -> AgentSettings:
    return AgentSettings(
        id="echo",
        name="Echo",
        description="",
        backend="echo",
        max_context_tokens=limit,
        system_prompt=prompt,
    )


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    parts = await make_parts(tmp_path / "plugin.db")
    await parts.store.upsert_room(room_row(ROOM))
    yield parts
    await parts.close()


def turn(n: int, text: str) -> TurnRow:
    return TurnRow(n, ROOM, None, "user", text, True, 0)


def test_tokens_are_about_four_characters() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2


def test_trim_drops_oldest_first_and_keeps_the_newest() -> None:
    turns = [turn(1, "a" * 40), turn(2, "b" * 40), turn(3, "c" * 40)]

    kept, tokens = trim(turns, fixed_tokens=5, limit=25)

    assert [t.id for t in kept] == [2, 3]
    assert tokens == 25
    # Even a message larger than the whole budget goes to the agent.
    kept, _ = trim(turns, fixed_tokens=5, limit=1)
    assert [t.id for t in kept] == [3]


def test_system_prompt_carries_the_memory() -> None:
    assert system_prompt(agent(), []) == "Be brief."
    prompt = system_prompt(agent(), ["likes tea", "lives in Lyon"])
    assert prompt == f"Be brief.\n\n{MEMORY_HEADING}\n- likes tea\n- lives in Lyon"


async def test_history_is_trimmed_in_the_db_but_memory_and_prompt_are_not(parts: Parts) -> None:
    room = await parts.store.get_room(ROOM)
    await parts.store.add_memory(room.owner, "m" * 200)
    for n in range(6):
        await parts.context.user_turn(ROOM, f"$e{n}", f"message {n} " + "x" * 30)
        await parts.store.add_turns(ROOM, [(None, "assistant", "y" * 40)])
    current = await parts.context.user_turn(ROOM, "$now", "the newest message")

    request = await parts.context.request_for(room, agent(limit=120), current, room.owner)

    assert request.text == "the newest message"
    assert "m" * 200 in request.system_prompt
    assert request.memory == ("m" * 200,)
    assert request.context_tokens <= 120
    assert 0 < len(request.history) < 12
    stored = await parts.store.turns(ROOM)
    assert len(stored) == len(request.history) + 1, "trimmed turns leave the DB"
    assert stored[-1].event_id == "$now"
    assert await parts.store.turn_for_event(ROOM, "$e0") is None, "the oldest went first"
    assert await parts.store.turn_for_event(ROOM, "$e5") is not None


async def test_user_turn_is_recorded_once_per_event(parts: Parts) -> None:
    first = await parts.context.user_turn(ROOM, "$same", "hello")
    again = await parts.context.user_turn(ROOM, "$same", "hello")

    assert first.id == again.id
    assert len(await parts.store.turns(ROOM)) == 1


async def test_memory_belongs_to_the_owner_and_follows_the_share_flag(parts: Parts) -> None:
    await parts.store.upsert_room(room_row("!bob:example.org", owner="@bob:example.org"))
    await parts.store.add_memory("@alice:example.org", "alice likes tea")
    alice_room = await parts.store.get_room(ROOM)
    bob_room = await parts.store.get_room("!bob:example.org")

    assert await parts.context.memory_for(alice_room) == ["alice likes tea"]
    assert await parts.context.memory_for(bob_room) == []

    await parts.context.set_share(alice_room, False)

    alice_room = await parts.store.get_room(ROOM)
    assert alice_room.share_memory is False
    assert await parts.context.memory_for(alice_room) == []
    binding = parts.client.account_data[(ROOM, BINDING_TYPE)]
    assert binding["share_memory"] is False


async def test_new_context_writes_the_binding_then_empties_the_history(parts: Parts) -> None:
    room = await parts.store.get_room(ROOM)
    await parts.context.user_turn(ROOM, "$old", "old message")

    chat_id = await parts.context.start_new(room, "$clear", summary="we talked about tea")

    binding = parts.client.account_data[(ROOM, BINDING_TYPE)]
    assert binding["chat_id"] == chat_id != room.chat_id
    assert binding["context_start"] == "$clear"
    assert binding["owner"] == room.owner
    room = await parts.store.get_room(ROOM)
    assert (room.chat_id, room.context_start) == (chat_id, "$clear")
    (only,) = await parts.store.turns(ROOM)
    assert only.role == "system"
    assert only.content == SUMMARY_PREFIX + "we talked about tea"


async def test_a_room_without_chat_id_gets_a_deterministic_one_without_a_write(
    parts: Parts,
) -> None:
    room = room_row("!old:example.org")
    room.chat_id = None
    await parts.store.upsert_room(room)

    assert chat_id_of(room) == deterministic_chat_id("!old:example.org") == chat_id_of(room)
    assert (await parts.store.get_room("!old:example.org")).chat_id is None
