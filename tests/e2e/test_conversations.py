"""Forks, the agent's identity in its rooms, shared rooms and usage, end to end. One deployment
per module; each test configures it and onboards users of its own."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.fakes.servers import Behavior, FakeOpenAI
from tests.harness.deploy import Deployment
from tests.harness.flows import (
    BINDING_TYPE,
    agent_room,
    bot_account_data,
    db_rows,
    metrics_text,
    room_links,
    wipe_and_restart,
)
from tests.harness.matrix_user import MatrixUser


def conversation(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] != "system"]


async def test_fork_starts_a_room_with_the_turns_up_to_the_message(
    module_bot: Deployment,
    make_user: Any,
    openai_server: FakeOpenAI,
    db_kind: str,
    request: pytest.FixtureRequest,
) -> None:
    bot = module_bot
    alice = await make_user("alice")
    room = await agent_room(alice, bot, openai_server.agent(stream=False))
    answers = [await alice.ask(room, f"question {n}", bot.bot_id, 30) for n in range(3)]

    event_id = await alice.send_text(room, "!ai fork", reply_to=answers[1].event_id)
    reply = await alice.wait_for_reply(room, event_id, bot.bot_id, timeout=30)
    (fork,) = [r for r in room_links(reply) if r != room]
    await alice.join(fork)
    up_to = ["question 0", "reply to: question 0", "question 1", "reply to: question 1"]

    assert (await alice.ask(fork, "in the fork", bot.bot_id, 30)).body == "reply to: in the fork"
    assert conversation(openai_server.requests[-1].body) == [*up_to, "in the fork"]
    binding = await bot_account_data(bot, fork, BINDING_TYPE)
    origin = await bot_account_data(bot, room, BINDING_TYPE)
    assert (binding["fork_room"], binding["fork_event"]) == (room, answers[1].event_id)
    assert binding["chat_id"] != origin["chat_id"] and binding["agent_id"] == origin["agent_id"]
    notices = [m.body for m in alice.messages_from(fork, bot.bot_id)]
    assert any(room in room_links(body) or "Forked from" in body for body in notices)
    # The origin room's context is untouched.
    await alice.ask(room, "back home", bot.bot_id, 30)
    assert conversation(openai_server.requests[-1].body)[-2:] == [
        "reply to: question 2",
        "back home",
    ]

    await wipe_and_restart(bot, db_kind, request)

    await alice.ask(fork, "after the wipe", bot.bot_id, 30)
    rebuilt = conversation(openai_server.requests[-1].body)
    assert rebuilt == [*up_to, "in the fork", "reply to: in the fork", "after the wipe"]


async def member_name(user: MatrixUser, room: str, bot: Deployment) -> dict[str, Any]:
    return await user.get_state(room, "m.room.member", bot.bot_id)


async def test_the_bot_shows_the_agents_name_and_avatar_and_use_changes_them(
    module_bot: Deployment, make_user: Any
) -> None:
    bot = module_bot
    alice = await make_user("alice")
    agents = [
        {"id": "echo", "name": "Echo Agent", "backend": "echo"},
        {"id": "parrot", "name": "Polly", "backend": "echo", "avatar": "mxc://localhost/polly"},
    ]
    room = await agent_room(alice, bot, agents[0], {"agents": agents})
    profile = await alice.request("GET", f"/profile/{bot.bot_id}")

    member = await member_name(alice, room, bot)
    assert member["displayname"] == "Echo Agent" and member["membership"] == "join"

    reply = await alice.ask(room, "!ai use parrot", bot.bot_id, 30)
    assert "Polly" in reply.body
    member = await member_name(alice, room, bot)
    assert member["displayname"] == "Polly"
    assert member["avatar_url"] == "mxc://localhost/polly"
    assert await alice.request("GET", f"/profile/{bot.bot_id}") == profile, "global unchanged"


async def onboarded_control(user: MatrixUser, bot: Deployment) -> str:
    """A plain room with the bot, for commands that work anywhere."""
    control = await user.create_room(invite=[bot.bot_id])
    await user.wait_for_membership(control, bot.bot_id, "join")
    return control


async def test_shared_room_answers_mentions_knows_senders_and_keeps_memories_apart(
    module_bot: Deployment,
    make_user: Any,
    openai_server: FakeOpenAI,
    db_kind: str,
    request: pytest.FixtureRequest,
) -> None:
    bot = module_bot
    alice, bob = await make_user("alice"), await make_user("bob")
    room = await agent_room(alice, bot, openai_server.agent(stream=False))
    await alice.ask(room, "!ai remember alice-secret-4711", bot.bot_id, 20)
    await alice.ask(room, "before bob came", bot.bot_id, 30)
    await bob.ask(await onboarded_control(bob, bot), "!ai remember bob-secret-0815", bot.bot_id)

    reply = await alice.ask(room, f"!ai invite {bob.user_id}", bot.bot_id, 20)
    assert "collaborator" in reply.body
    await bob.wait_for_invite(lambda room_id, _: room_id == room)
    await bob.join(room)
    quiet = await bob.send_text(room, "hello everyone")
    called = await bob.send_text(room, "what do you know?", mentions=[bot.bot_id])
    answered = await bob.wait_for_reply(room, called, bot.bot_id, timeout=30)
    assert answered.body == "reply to: what do you know?"
    assert bob.replies_to(room, quiet, bot.bot_id) == [], "an unmentioned message is not answered"
    names = {
        alice.user_id: alice.user_id[1:].split(":")[0],
        bob.user_id: bob.user_id[1:].split(":")[0],
    }
    seen = openai_server.requests[-1].body
    users = [(m["content"], m.get("name")) for m in seen["messages"] if m["role"] == "user"]
    assert users == [
        ("before bob came", names[alice.user_id]),
        ("hello everyone", names[bob.user_id]),
        ("what do you know?", names[bob.user_id]),
    ], "every message is in the context, with who said it"
    assert "alice-secret" not in str(seen), "bob never sees alice's memory"

    alice_asks = await alice.send_text(room, "Assistant, and for me?")
    await alice.wait_for_reply(room, alice_asks, bot.bot_id, timeout=30)
    assert "alice-secret-4711" in openai_server.system_prompts()[-1], "the owner's memory"
    assert not any("bob-secret" in str(r.body) for r in openai_server.requests)

    await wipe_and_restart(bot, db_kind, request)

    assert (await bot_account_data(bot, room, BINDING_TYPE))["collaborators"] == [bob.user_id]
    rows = {r["room_id"]: r for r in await db_rows(bot, db_kind, request, "room")}
    assert bob.user_id in rows[room]["collaborators"], "rebuilt from the binding"
    quiet = await bob.send_text(room, "just chatting")
    called = await bob.send_text(room, "still me", mentions=[bot.bot_id])
    await bob.wait_for_reply(room, called, bot.bot_id, timeout=30)
    assert bob.replies_to(room, quiet, bot.bot_id) == []


async def test_usage_shows_the_token_counts_the_server_reported(
    module_bot: Deployment, make_user: Any, openai_server: FakeOpenAI
) -> None:
    bot = module_bot
    alice = await make_user("alice")
    openai_server.default = Behavior(usage={"prompt_tokens": 120, "completion_tokens": 48})
    agent = openai_server.agent("counted", name="Counted")
    room = await agent_room(alice, bot, agent, {"limits.daily_tokens": 300})

    for n in range(2):
        assert (await alice.ask(room, f"count {n}", bot.bot_id, 30)).body == f"reply to: count {n}"
    assert openai_server.requests[0].body["stream_options"] == {"include_usage": True}
    usage = await alice.ask(room, "!ai usage", bot.bot_id, 20)

    assert "**Counted**: today 2 messages, 336 tokens; this month 2 messages, 336 tokens" in (
        usage.body
    ), usage.body
    assert re.search(
        r'^agentspaces_tokens_total\{agent="counted"\} 336$', await metrics_text(bot), re.M
    )
    # The daily limit counts the reported figures (an estimate would be a tenth of them).
    refused = await alice.ask(room, "one more", bot.bot_id, 30)
    assert "allowance of 300 tokens" in refused.body
