"""Context building: trimming, memory, new contexts and share flags, on the real store."""

from __future__ import annotations

import attrs

from plugin.agents.base import Turn
from plugin.agents.files import Attachment
from plugin.conversation.context import (
    ASSISTANT,
    MEMORY_HEADING,
    SUMMARY_PREFIX,
    USER,
    chat_id_of,
    estimate_tokens,
    system_prompt,
    trim,
)
from plugin.db.rows import NewTurn, TurnRow
from plugin.matrix.binding import BINDING_TYPE, deterministic_chat_id
from plugin.ops.settings import AgentSettings
from tests.config import settings
from tests.fakes.world import World, room_row

ROOM = "!room:example.org"


def agent(limit: int = 8000, prompt: str = "Be brief.") -> AgentSettings:
    echo = settings().agents["echo"]
    return attrs.evolve(echo, max_context_tokens=limit, system_prompt=prompt)


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


async def test_history_is_trimmed_in_the_db_but_memory_and_prompt_are_not(world: World) -> None:
    room = await world.add_room(ROOM)
    context, store = world.parts.context, world.store
    await store.memory.add(room.owner, "m" * 200)
    for n in range(6):
        await store.turns.add_pending(ROOM, f"$e{n}", "user", f"message {n} " + "x" * 30)
        await store.turns.add_answered(ROOM, [NewTurn(None, "assistant", "y" * 40)])
    request = await context.request_for(
        room, agent(limit=120), room.owner, "the newest message", "$now"
    )

    assert request.text == "the newest message" and request.event_id == "$now"
    assert "m" * 200 in request.system_prompt
    assert request.memory == ("m" * 200,)
    assert request.context_tokens <= 120
    assert 0 < len(request.history) < 12
    # The newest message's turn is written with its answer; the trimmed ones leave the DB.
    stored = await store.turns.of_room(ROOM)
    assert len(stored) == len(request.history), "trimmed turns leave the DB"
    assert await store.turns.for_event(ROOM, "$e0") is None, "the oldest went first"
    assert await store.turns.for_event(ROOM, "$e5") is not None


async def test_memory_belongs_to_the_owner_and_follows_the_share_flag(world: World) -> None:
    context = world.parts.context
    alice_room = await world.add_room(ROOM)
    bob_room = await world.add_room("!bob:example.org", owner="@bob:example.org")
    await world.store.memory.add("@alice:example.org", "alice likes tea")

    assert await context.memory_for(alice_room) == ["alice likes tea"]
    assert await context.memory_for(bob_room) == []

    await context.set_share(alice_room, False)

    alice_room = await world.room(ROOM)
    assert alice_room.share_memory is False
    assert await context.memory_for(alice_room) == []
    binding = world.fake.account_data[(ROOM, BINDING_TYPE)]
    assert binding["share_memory"] is False


async def test_new_context_writes_the_binding_then_empties_the_history(world: World) -> None:
    room = await world.add_room(ROOM)
    await world.store.turns.add_pending(ROOM, "$old", "user", "old message")

    chat_id = await world.parts.context.start_new(room, "$clear", summary="we talked about tea")

    binding = world.fake.account_data[(ROOM, BINDING_TYPE)]
    assert binding["chat_id"] == chat_id != room.chat_id
    assert binding["context_start"] == "$clear"
    assert binding["owner"] == room.owner
    room = await world.room(ROOM)
    assert (room.chat_id, room.context_start) == (chat_id, "$clear")
    (only,) = await world.store.turns.of_room(ROOM)
    assert only.role == "system"
    assert only.content == SUMMARY_PREFIX + "we talked about tea"


async def test_a_room_without_chat_id_gets_a_deterministic_one_without_a_write(
    world: World,
) -> None:
    room = room_row("!old:example.org")
    room.chat_id = None
    await world.store.rooms.upsert(room)

    assert chat_id_of(room) == deterministic_chat_id("!old:example.org") == chat_id_of(room)
    stored = await world.room("!old:example.org")
    assert stored.chat_id is None
    assert ("!old:example.org", BINDING_TYPE) not in world.fake.account_data


async def test_an_answer_still_on_its_way_is_in_the_context_with_its_files(world: World) -> None:
    """The exchange before this message is answered but not written down yet: the agent gets it
    all the same, with who said it and the references of its files."""
    room = await world.add_room(ROOM)
    image = Attachment("image", "image/png", "cat.png", 3, "mxc://example.org/cat")
    pending = [
        Turn(USER, "look at this", "@alice:example.org", (image,)),
        Turn(ASSISTANT, "a cat"),
    ]
    request = await world.parts.context.request_for(
        room, agent(), room.owner, "and now?", "$now", pending=pending
    )

    assert request.history == (
        Turn(USER, "look at this", "@alice:example.org", (image,)),
        Turn(ASSISTANT, "a cat"),
    )
    assert await world.store.turns.of_room(ROOM) == [], "nothing is written by the request"
