"""Messages in a working room reach its agent, in order, and come back as streamed replies."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.fakes.servers import SECRET, Behavior, FakeAgentPlatform, FakeOpenAI
from tests.harness.deploy import Deployment
from tests.harness.flows import BINDING_TYPE, agent_room, bot_account_data, db_rows, onboard
from tests.harness.matrix_user import STREAMING_KEY


async def test_streamed_reply_is_edited_until_complete(
    bot: Deployment,
    make_user,
    openai_server: FakeOpenAI,
) -> None:
    alice = await make_user("alice")
    room = await agent_room(alice, bot, openai_server.agent(), {"dispatch.edit_interval": 0.2})
    answer = "Here is **bold** advice, streamed in six chunks to the room."
    openai_server.script(Behavior(reply=answer, chunks=6, chunk_delay=0.3))

    event_id = await alice.send_text(room, "give me advice")
    reply = await alice.wait_for_reply(room, event_id, bot.bot_id, timeout=30)

    assert reply.body == answer
    assert reply.edits >= 2, "a streamed answer is one message, edited as it grows"
    assert "<strong>bold</strong>" in reply.content["formatted_body"]
    assert STREAMING_KEY not in reply.content
    first = next(
        ev for ev in alice.events(room, sender=bot.bot_id) if ev["event_id"] == reply.event_id
    )
    assert first["content"][STREAMING_KEY] is True
    assert len(first["content"]["body"]) < len(answer)
    assert any(bot.bot_id in ids for ids in alice.typing.get(room, [])), "typing was shown"
    (sent,) = openai_server.requests
    assert sent.body["stream"] is True
    assert sent.body["messages"][-1] == {"role": "user", "content": "give me advice"}


async def test_five_quick_messages_are_answered_in_order(
    bot: Deployment,
    make_user,
    openai_server: FakeOpenAI,
    db_kind: str,
    request: pytest.FixtureRequest,
) -> None:
    alice = await make_user("alice")
    room = await agent_room(alice, bot, openai_server.agent(stream=False))
    openai_server.default = Behavior(delay=0.2)

    event_ids = [await alice.send_text(room, f"message {n}") for n in range(5)]
    replies = [await alice.wait_for_reply(room, ev, bot.bot_id, timeout=30) for ev in event_ids]

    assert [r.body for r in replies] == [f"reply to: message {n}" for n in range(5)]
    assert [r.body["messages"][-1]["content"] for r in openai_server.requests] == [
        f"message {n}" for n in range(5)
    ]
    assert openai_server.max_active == 1, "one room is answered one message at a time"
    # Each message saw the answers to the ones before it.
    assert len(openai_server.requests[-1].body["messages"]) == 1 + 2 * 4 + 1
    bot_messages = [ev["event_id"] for ev in alice.events(room, "m.room.message", bot.bot_id)]
    assert [bot_messages.index(r.event_id) for r in replies] == sorted(
        bot_messages.index(r.event_id) for r in replies
    )
    states = {r["event_id"]: r["state"] for r in await db_rows(bot, db_kind, request, "message")}
    assert all(states.get(e) == "answered" for e in event_ids), "every answer is recorded"


async def test_two_rooms_progress_in_parallel(
    bot: Deployment,
    make_user,
    openai_server: FakeOpenAI,
) -> None:
    await bot.update_config(
        {
            "agents": [
                openai_server.agent("first", stream=False),
                openai_server.agent("second", stream=False),
            ],
            "default_agent": "first",
            "onboarding.rooms": ["first", "second"],
        }
    )
    alice = await make_user("alice")
    rooms = (await onboard(alice, bot)).rooms
    openai_server.default = Behavior(delay=2.0)

    started = time.monotonic()
    first = await alice.send_text(rooms["first"], "to the first")
    second = await alice.send_text(rooms["second"], "to the second")
    replies = await asyncio.gather(
        alice.wait_for_reply(rooms["first"], first, bot.bot_id, timeout=30),
        alice.wait_for_reply(rooms["second"], second, bot.bot_id, timeout=30),
    )

    assert [r.body for r in replies] == ["reply to: to the first", "reply to: to the second"]
    assert openai_server.max_active == 2
    assert time.monotonic() - started < 3.9, "the rooms did not wait for each other"


async def test_http_agent_gets_the_rooms_chat_id_and_answers_in_the_thread(
    bot: Deployment,
    make_user,
    agent_server: FakeAgentPlatform,
) -> None:
    alice = await make_user("alice")
    room = await agent_room(alice, bot, agent_server.agent(send_history=True))
    agent_server.script(Behavior(), Behavior(chunks=4, chunk_delay=0.1))

    root = await alice.send_text(room, "first question")
    await alice.wait_for_reply(room, root, bot.bot_id)
    in_thread = await alice.send_text(room, "a question in a thread", thread_root=root)
    reply = await alice.wait_for_reply(room, in_thread, bot.bot_id)

    assert reply.body == "platform reply to: a question in a thread"
    relation = next(
        ev["content"]["m.relates_to"]
        for ev in alice.events(room, sender=bot.bot_id)
        if ev["event_id"] == reply.event_id
    )
    assert relation["rel_type"] == "m.thread"
    assert relation["event_id"] == root
    assert relation["m.in_reply_to"] == {"event_id": in_thread}
    binding = await bot_account_data(bot, room, BINDING_TYPE)
    first, second = (r.body for r in agent_server.requests)
    assert first["chat_id"] == binding["chat_id"]
    # A thread is a conversation of its own (tests/e2e/test_threads.py), seeded with its root.
    assert second["chat_id"] != binding["chat_id"]
    assert second["sender"] == alice.user_id
    assert second["event_id"] == in_thread
    assert second["history"] == [
        {"role": "user", "content": "first question", "sender": alice.user_id}
    ]
    assert agent_server.requests[0].headers["X-Api-Key"] == SECRET


async def test_only_the_owners_text_messages_reach_the_agent(
    bot: Deployment,
    make_user,
    openai_server: FakeOpenAI,
) -> None:
    alice = await make_user("alice")
    room = await agent_room(alice, bot, openai_server.agent(stream=False))
    mallory = await make_user("mallory")
    await alice.invite(room, mallory.user_id)
    await mallory.join(room)

    await alice.send(room, {"msgtype": "m.notice", "body": "a notice"})
    await alice.send_text(room, "!ai help")
    await mallory.send_text(room, "from someone else")
    original = await alice.send_text(room, "a tpyo")
    await alice.wait_for_reply(room, original, bot.bot_id)
    await alice.send(
        room,
        {
            "msgtype": "m.text",
            "body": "* a typo",
            "m.new_content": {"msgtype": "m.text", "body": "a typo"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": original},
        },
    )
    last = await alice.send_text(room, "the last one")
    await alice.wait_for_reply(room, last, bot.bot_id)

    assert [r.body["messages"][-1]["content"] for r in openai_server.requests] == [
        "a tpyo",
        "the last one",
    ]


async def test_a_command_in_any_case_runs_once_and_never_reaches_the_agent(
    bot: Deployment, make_user, openai_server: FakeOpenAI
) -> None:
    alice = await make_user("alice")
    room = await agent_room(alice, bot, openai_server.agent())

    command = await alice.send_text(room, "!AI help")
    reply = await alice.wait_for_reply(room, command, bot.bot_id)
    answer = await alice.ask(room, "and a question", bot.bot_id)

    assert "Agent Spaces commands" in reply.body
    assert answer.body == "reply to: and a question"
    assert len(alice.replies_to(room, command, bot.bot_id)) == 1, "maubot ran it once"
    assert [r.body["messages"][-1]["content"] for r in openai_server.requests] == [
        "and a question"
    ], "a command never reaches the agent"


async def test_agent_markdown_shows_images_as_links_and_drops_unsafe_links(
    bot: Deployment, make_user, openai_server: FakeOpenAI
) -> None:
    alice = await make_user("alice")
    room = await agent_room(alice, bot, openai_server.agent(stream=False))
    injected = (
        "**Hi** ![logo](https://evil.example/track.png) ![m](mxc://evil.example/abc) "
        "[click me](javascript:alert(1)) [docs](https://example.org/docs) <img src=x>"
    )
    openai_server.script(Behavior(reply=injected))

    html = (await alice.ask(room, "hello", bot.bot_id)).content["formatted_body"]
    await alice.ask(room, f"!ai remember {injected}", bot.bot_id)
    echoed = (await alice.ask(room, "!ai memory", bot.bot_id)).content["formatted_body"]

    for shown in (html, echoed):
        assert "<strong>Hi</strong>" in shown, "markdown is kept"
        assert "<img" not in shown and "javascript:" not in shown and "mxc://" not in shown
        assert '<a href="https://evil.example/track.png">logo</a>' in shown
        assert '<a href="https://example.org/docs">docs</a>' in shown
        assert "click me" in shown and "&lt;img src=x&gt;" in shown
