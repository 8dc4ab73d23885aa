"""A room's context grows, is trimmed, cleared, compacted and retried; memory stays per user."""

from __future__ import annotations

import re

import pytest

from tests.fakes.servers import FakeOpenAI
from tests.harness.deploy import Deployment
from tests.harness.flows import BINDING_TYPE, agent_room, bot_account_data, db_rows, onboard
from tests.harness.matrix_user import MatrixUser

COMPACT_PROMPT_START = "Summarise our conversation so far"


def echo_agent(limit: int) -> dict:
    return {"id": "echo", "name": "Echo", "backend": "echo", "max_context_tokens": limit}


def context_size(reply_body: str) -> tuple[int, int]:
    """Turns and tokens from an echo reply's "(context: N turns, ~T tokens)"."""
    match = re.search(r"\(context: (\d+) turns?, ~(\d+) tokens", reply_body)
    assert match, reply_body
    return int(match[1]), int(match[2])


async def ask(user: MatrixUser, bot: Deployment, room: str, text: str) -> str:
    return (await user.ask(room, text, bot.bot_id)).body


async def test_context_grows_then_is_trimmed_to_the_limit(bot: Deployment, make_user) -> None:
    alice = await make_user("alice")
    room = await agent_room(alice, bot, echo_agent(limit=100))

    sizes = [
        context_size(await ask(alice, bot, room, f"message {n}: " + "x" * 40)) for n in range(8)
    ]

    turns = [t for t, _ in sizes]
    assert turns[:3] == [1, 3, 5], "the context grows by the message and its answer"
    assert max(turns) < 15, "older turns were trimmed"
    assert all(tokens <= 100 for _, tokens in sizes)
    shown = await ask(alice, bot, room, "!ai context")
    assert "Context of this room" in shown
    assert re.search(r"Estimated tokens: \d+ of 100", shown)
    assert "Shared memory: on" in shown


async def test_clear_starts_a_new_context_with_a_new_chat_id(
    bot: Deployment, make_user, db_kind: str, request: pytest.FixtureRequest
) -> None:
    alice = await make_user("alice")
    room = (await onboard(alice, bot)).rooms["echo"]
    await ask(alice, bot, room, "first")
    before = await bot_account_data(bot, room, BINDING_TYPE)

    clear = await alice.send_text(room, "!ai context clear")
    reply = await alice.wait_for_reply(room, clear, bot.bot_id)

    after = await bot_account_data(bot, room, BINDING_TYPE)
    assert after["chat_id"] != before["chat_id"]
    assert after["context_start"] == clear
    assert f"New chat id: `{after['chat_id'][:8]}`" in reply.body
    (row,) = [r for r in await db_rows(bot, db_kind, request, "room") if r["room_id"] == room]
    assert (row["chat_id"], row["context_start"]) == (after["chat_id"], clear)
    assert context_size(await ask(alice, bot, room, "after the clear"))[0] == 1
    assert f"Chat id: `{after['chat_id'][:8]}`" in await ask(alice, bot, room, "!ai context")


async def test_compact_and_retry(
    bot: Deployment,
    make_user,
    openai_server: FakeOpenAI,
) -> None:
    alice = await make_user("alice")
    room = await agent_room(alice, bot, openai_server.agent(stream=False))
    await ask(alice, bot, room, "my name is Alice")
    last = await alice.send_text(room, "I live in Lyon")
    await alice.wait_for_reply(room, last, bot.bot_id)
    before = await bot_account_data(bot, room, BINDING_TYPE)

    # Retry with every message answered: the last one is answered again.
    await alice.send_text(room, "!ai retry")
    await alice.wait_for(
        lambda: len(alice.replies_to(room, last, bot.bot_id)) == 2, what="a second answer"
    )
    retried = openai_server.requests[-1].body["messages"]
    assert retried[-1]["content"] == "I live in Lyon"
    assert len(retried) == 4, "the replaced answer is not in the context twice"

    compacted = await ask(alice, bot, room, "!ai context compact")

    assert "Context compacted: 4 turns" in compacted
    assert (
        openai_server.requests[-1].body["messages"][-1]["content"].startswith(COMPACT_PROMPT_START)
    )
    after = await bot_account_data(bot, room, BINDING_TYPE)
    assert after["chat_id"] != before["chat_id"]
    await ask(alice, bot, room, "what do you know?")
    messages = openai_server.requests[-1].body["messages"]
    assert [m["role"] for m in messages] == ["system", "system", "user"]
    assert messages[1]["content"].startswith("Summary of the earlier conversation:")
    assert "reply to: Summarise" in messages[1]["content"]


async def test_memory_reaches_one_users_rooms_and_never_anothers(
    bot: Deployment,
    make_user,
    openai_server: FakeOpenAI,
) -> None:
    await bot.update_config(
        {"agents": [openai_server.agent(stream=False)], "default_agent": "assistant"}
    )
    alice, bob = await make_user("alice"), await make_user("bob")
    alice_room = (await onboard(alice, bot)).rooms["assistant"]
    bob_room = (await onboard(bob, bot)).rooms["assistant"]

    assert "Remembered as entry 1" in await ask(
        alice, bot, alice_room, "!ai remember I drink green tea"
    )
    await ask(alice, bot, alice_room, "!ai remember I am vegetarian")
    listing = await ask(alice, bot, alice_room, "!ai memory")
    assert "1. I drink green tea" in listing and "2. I am vegetarian" in listing
    assert "empty" in await ask(bob, bot, bob_room, "!ai memory")

    await ask(alice, bot, alice_room, "what should I order?")
    alice_prompt = openai_server.requests[-1].body["messages"][0]["content"]
    await ask(bob, bot, bob_room, "what should I order?")
    bob_prompt = openai_server.requests[-1].body["messages"][0]["content"]
    assert "I drink green tea" in alice_prompt and "I am vegetarian" in alice_prompt
    assert alice_prompt.startswith("You are a test assistant.")
    assert "green tea" not in bob_prompt and "vegetarian" not in bob_prompt

    assert "Shared memory is off" in await ask(alice, bot, alice_room, "!ai context share off")
    assert (await bot_account_data(bot, alice_room, BINDING_TYPE))["share_memory"] is False
    await ask(alice, bot, alice_room, "and now?")
    assert "green tea" not in openai_server.requests[-1].body["messages"][0]["content"]
    assert "Say `!ai context share on`" in await ask(
        alice, bot, alice_room, "!ai context share maybe"
    )
    await ask(alice, bot, alice_room, "!ai context share on")

    assert "Forgot entry 1: I drink green tea" in await ask(alice, bot, alice_room, "!ai forget 1")
    assert "1 to 1" in await ask(alice, bot, alice_room, "!ai forget 7")
    await ask(alice, bot, alice_room, "and now?")
    prompt = openai_server.requests[-1].body["messages"][0]["content"]
    assert "vegetarian" in prompt and "green tea" not in prompt
    assert "Forgot all 1 entries" in await ask(alice, bot, alice_room, "!ai forget all")
