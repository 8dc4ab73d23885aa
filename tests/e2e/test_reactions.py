"""Reactions on the bot's answers as controls: 🔁 regenerates in place, ⏹️ stops a streaming
answer, 👍 is feedback (metrics, and the http agent is told). One deployment per module."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.fakes.servers import Behavior, FakeAgentPlatform, FakeOpenAI
from tests.harness.deploy import Deployment
from tests.harness.flows import agent_room, db_rows, metrics_text


def user_texts(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] != "system"]


async def test_regenerate_edits_the_answer_and_calls_the_agent_with_the_same_context(
    module_bot: Deployment, make_user: Any, openai_server: FakeOpenAI
) -> None:
    bot = module_bot
    alice = await make_user("alice")
    room = await agent_room(alice, bot, openai_server.agent(stream=False))
    first = await alice.send_text(room, "first question")
    answer = await alice.wait_for_reply(room, first, bot.bot_id, timeout=30)
    second = await alice.send_text(room, "second question")
    await alice.wait_for_reply(room, second, bot.bot_id, timeout=30)
    openai_server.script(Behavior(reply="a better first answer"))

    await alice.react(room, answer.event_id, "🔁")

    def regenerated() -> bool:
        replies = alice.replies_to(room, first, bot.bot_id)
        return bool(replies) and replies[0].final and replies[0].body == "a better first answer"

    await alice.wait_for(regenerated, 30, "the answer to be regenerated")
    (reply,) = alice.replies_to(room, first, bot.bot_id)
    assert reply.event_id == answer.event_id, "the same message, edited"
    first_call, _, again = openai_server.requests
    assert again.body["messages"] == first_call.body["messages"], "the same context up to it"
    # The context now holds the new answer, in its place.
    third = await alice.send_text(room, "third question")
    await alice.wait_for_reply(room, third, bot.bot_id, timeout=30)
    assert user_texts(openai_server.requests[-1].body) == [
        "first question",
        "a better first answer",
        "second question",
        "reply to: second question",
        "third question",
    ]


async def test_stop_closes_the_backend_connection_and_says_it_was_stopped(
    module_bot: Deployment, make_user: Any, openai_server: FakeOpenAI
) -> None:
    bot = module_bot
    alice = await make_user("alice")
    room = await agent_room(alice, bot, openai_server.agent(), {"dispatch.edit_interval": 0.2})
    full = " ".join(f"word{n}" for n in range(60))
    openai_server.script(Behavior(reply=full, chunks=60, chunk_delay=0.25))
    question = await alice.send_text(room, "talk slowly")

    def streaming() -> Any:
        replies = alice.replies_to(room, question, bot.bot_id)
        return replies[0] if replies and not replies[0].final else None

    partial = await alice.wait_for(streaming, 30, "the answer to be streaming")
    await alice.react(room, partial.event_id, "⏹️")

    reply = await alice.wait_for_reply(room, question, bot.bot_id, timeout=30)
    assert reply.event_id == partial.event_id
    assert reply.body.endswith("(Stopped.)"), reply.body
    assert reply.body.startswith("word0") and len(reply.body) < len(full)
    await alice.wait_for(lambda: openai_server.disconnects == 1, 10, "the connection to close")
    # The room goes on: the next message is answered as usual.
    assert (await alice.ask(room, "still there?", bot.bot_id, 30)).body == "reply to: still there?"


async def test_thumbs_up_is_recorded_in_metrics_and_sent_to_the_http_agent(
    module_bot: Deployment,
    make_user: Any,
    agent_server: FakeAgentPlatform,
    db_kind: str,
    request: pytest.FixtureRequest,
) -> None:
    bot = module_bot
    alice = await make_user("alice")
    room = await agent_room(alice, bot, agent_server.agent("rated"))
    question = await alice.send_text(room, "rate me")
    answer = await alice.wait_for_reply(room, question, bot.bot_id, timeout=30)
    chat_id = agent_server.requests[-1].body["chat_id"]
    before = await metrics_text(bot)
    assert 'agentspaces_feedback_total{agent="rated"' not in before

    await alice.react(room, answer.event_id, "👍")

    await alice.wait_for(lambda: agent_server.feedback, 20, "the feedback to reach the agent")
    (feedback,) = agent_server.feedback
    assert feedback == {
        "type": "feedback",
        "chat_id": chat_id,
        "agent": "rated",
        "room_id": room,
        "sender": alice.user_id,
        "event_id": answer.event_id,
        "reply_to": question,
        "rating": "up",
    }
    rows = [r for r in await db_rows(bot, db_kind, request, "feedback") if r["room_id"] == room]
    assert [(r["event_id"], r["user_id"], r["rating"]) for r in rows] == [
        (answer.event_id, alice.user_id, "up")
    ]
    assert re.search(
        r'^agentspaces_feedback_total\{agent="rated",rating="up"\} 1$',
        await metrics_text(bot),
        re.MULTILINE,
    )


async def test_reactions_of_other_members_are_ignored(
    module_bot: Deployment, make_user: Any, agent_server: FakeAgentPlatform
) -> None:
    bot = module_bot
    alice, mallory = await make_user("alice"), await make_user("mallory")
    room = await agent_room(alice, bot, agent_server.agent("guarded"))
    # Mallory gets into the room by the owner's own invite, without being a collaborator.
    await alice.invite(room, mallory.user_id)
    await mallory.join(room)
    question = await alice.send_text(room, "only mine")
    answer = await alice.wait_for_reply(room, question, bot.bot_id, timeout=30)

    await mallory.react(room, answer.event_id, "👎")
    await mallory.react(room, answer.event_id, "🔁")
    # A command of the owner's afterwards: once answered, the reactions before it were seen.
    await alice.ask(room, "!ai help", bot.bot_id, 20)

    assert agent_server.feedback == []
    assert len(agent_server.requests) == 1, "nothing was regenerated"
    assert 'agentspaces_feedback_total{agent="guarded"' not in await metrics_text(bot)
