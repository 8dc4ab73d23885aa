"""Threads are conversations: each has its own context, seeded with its root, and its own chat
id, derived so that a rebuild from Matrix (a wiped database) gives the same id."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fakes.servers import FakeAgentPlatform
from tests.harness.deploy import Deployment
from tests.harness.flows import (
    BINDING_TYPE,
    agent_room,
    bot_account_data,
    event_content,
    wipe_and_restart,
)
from tests.harness.matrix_user import MatrixUser


async def ask(
    user: MatrixUser, room: str, bot: Deployment, agent: FakeAgentPlatform, text: str, root: str
) -> dict[str, Any]:
    """Sends a message in a thread (or the main timeline with root ''), waits for its answer,
    checks the answer is in the same place, and returns what the agent received."""
    event_id = await user.send_text(room, text, thread_root=root or None)
    reply = await user.wait_for_reply(room, event_id, bot.bot_id, timeout=30)
    assert reply.body == f"platform reply to: {text}"
    relation = event_content(user, room, reply.event_id).get("m.relates_to") or {}
    if root:
        assert relation.get("rel_type") == "m.thread" and relation.get("event_id") == root
    else:
        assert relation.get("rel_type") != "m.thread", "the main timeline is answered there"
    bodies = [r.body for r in agent.requests if r.body["event_id"] == event_id]
    assert bodies, f"the agent never saw {text!r}"
    return bodies[-1]


def said(body: dict[str, Any]) -> list[str]:
    return [turn["content"] for turn in body["history"]]


async def test_two_threads_keep_separate_contexts_and_chat_ids_through_a_db_wipe(
    module_bot: Deployment,
    make_user: Any,
    agent_server: FakeAgentPlatform,
    db_kind: str,
    request: pytest.FixtureRequest,
) -> None:
    bot = module_bot
    alice = await make_user("alice")
    room = await agent_room(alice, bot, agent_server.agent(send_history=True))
    room_chat = (await bot_account_data(bot, room, BINDING_TYPE))["chat_id"]
    first = await alice.send_text(room, "first topic")
    second = await alice.send_text(room, "second topic")
    for event_id in (first, second):
        await alice.wait_for_reply(room, event_id, bot.bot_id, timeout=30)

    one = await ask(alice, room, bot, agent_server, "one: apples?", first)
    two = await ask(alice, room, bot, agent_server, "two: pears?", second)
    one_again = await ask(alice, room, bot, agent_server, "one: and plums?", first)

    assert len({room_chat, one["chat_id"], two["chat_id"]}) == 3, "each thread has its own"
    assert one_again["chat_id"] == one["chat_id"]
    # Seeded with the root; then the thread's own exchanges, nothing of the other thread.
    assert said(one) == ["first topic"]
    assert one["history"][0]["sender"] == alice.user_id
    assert said(two) == ["second topic"]
    assert said(one_again) == ["first topic", "one: apples?", "platform reply to: one: apples?"]
    main = await ask(alice, room, bot, agent_server, "main again", "")
    assert main["chat_id"] == room_chat
    assert not any("apples" in text or "pears" in text for text in said(main))

    await wipe_and_restart(bot, db_kind, request)

    one_after = await ask(alice, room, bot, agent_server, "one: and figs?", first)
    two_after = await ask(alice, room, bot, agent_server, "two: and quinces?", second)
    assert one_after["chat_id"] == one["chat_id"], "the same thread chat id after the rebuild"
    assert two_after["chat_id"] == two["chat_id"]
    assert said(one_after)[0] == "first topic"
    assert "one: and plums?" in said(one_after), "the thread's context was rebuilt"
    assert not any("pears" in text for text in said(one_after))
    assert said(two_after) == ["second topic", "two: pears?", "platform reply to: two: pears?"]
