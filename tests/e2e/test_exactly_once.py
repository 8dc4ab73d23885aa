"""Exactly once under faults, end to end: maubot killed or stopped while it answers, answers too
long for one event, and a command reply after a message still waiting for its answer."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fakes.servers import Behavior, FakeAgentPlatform, FakeOpenAI
from tests.harness.deploy import Deployment
from tests.harness.flows import agent_room, answered_once_in_order, answers, db_rows
from tests.harness.matrix_user import STREAMING_KEY, MatrixUser

# Matrix refuses events over 64 KiB; every event the bot sends stays well under it.
EVENT_LIMIT = 60 * 1024


def expected(text: str) -> str:
    return f"reply to: {text}"


async def assert_answered_once_in_order(
    user: MatrixUser, room_id: str, sent: list[tuple[str, str]], bot: Deployment
) -> None:
    replies = await answered_once_in_order(user, room_id, [event_id for event_id, _ in sent], bot)
    assert [reply.body for reply in replies] == [expected(text) for _, text in sent]


@pytest.mark.parametrize("fault", ["sigkill", "stop"])
async def test_a_crash_or_stop_mid_stream_answers_everything_once_in_order(
    bot: Deployment, make_user: Any, openai_server: FakeOpenAI, fault: str
) -> None:
    alice = await make_user("alice")
    room = await agent_room(alice, bot, openai_server.agent())
    # The first answer streams slowly; the two messages behind it wait in the room's queue.
    openai_server.script(Behavior(chunks=30, chunk_delay=0.3))
    texts = ["first, streamed", "second, queued", "third, queued"]
    sent = [(await alice.send_text(room, text), text) for text in texts]

    def streaming() -> bool:
        replies = alice.replies_to(room, sent[0][0], bot.bot_id)
        return bool(replies) and not replies[0].final

    await alice.wait_for(streaming, 30, "the first answer to be streaming")
    await (bot.kill() if fault == "sigkill" else bot.stop())
    await bot.start()

    await assert_answered_once_in_order(alice, room, sent, bot)
    # The interrupted reply itself was completed: no half-written reply is left.
    for event_id, _ in sent:
        assert all(
            not r.content.get(STREAMING_KEY) for r in alice.replies_to(room, event_id, bot.bot_id)
        )


@pytest.mark.parametrize("fault", ["sigkill", "stop"])
async def test_a_message_waiting_behind_a_command_reply_is_answered_after_the_start(
    bot: Deployment, make_user: Any, openai_server: FakeOpenAI, fault: str
) -> None:
    alice = await make_user("alice")
    room = await agent_room(alice, bot, openai_server.agent())
    # The agent takes its time: the bot goes down while the message waits for it.
    openai_server.script(Behavior(delay=60))
    question = await alice.send_text(room, "a question for a slow agent")
    await openai_server.wait_for_requests(1)
    await alice.ask(room, "!ai help", bot.bot_id)
    await (bot.kill() if fault == "sigkill" else bot.stop())
    await bot.start()

    (reply,) = await answers(alice, room, question, bot)
    assert reply.body == expected("a question for a slow agent")
    await bot.restart()
    assert len(alice.replies_to(room, question, bot.bot_id)) == 1, "answered once, ever"


def event_sizes(user: MatrixUser, room_id: str, bot: Deployment) -> list[int]:
    return [len(json.dumps(e)) for e in user.events(room_id, sender=bot.bot_id)]


@pytest.mark.parametrize("backend", ["openai-stream", "http-json"])
async def test_a_40000_character_answer_arrives_whole_in_events_under_60_kib(
    bot: Deployment,
    make_user: Any,
    openai_server: FakeOpenAI,
    agent_server: FakeAgentPlatform,
    backend: str,
) -> None:
    alice = await make_user("alice")
    long = "".join(f"Paragraph {n}: {'all work and no play ' * 20}\n\n" for n in range(95))
    assert len(long) >= 40_000
    if backend == "openai-stream":
        openai_server.script(Behavior(reply=long, chunks=80, chunk_delay=0.01))
        room = await agent_room(alice, bot, openai_server.agent(), {"dispatch.edit_interval": 0.2})
    else:
        agent_server.script(Behavior(reply=long))
        room = await agent_room(alice, bot, agent_server.agent())

    question = await alice.send_text(room, "tell me everything")
    parts = await answers(alice, room, question, bot)

    assert len(parts) > 1, "one event could not hold it"
    assert "".join(part.body for part in parts) == long, "the whole text, in order"
    assert max(event_sizes(alice, room, bot)) < EVENT_LIMIT


async def test_the_delivery_state_ends_answered(
    bot: Deployment,
    make_user: Any,
    openai_server: FakeOpenAI,
    db_kind: str,
    request: pytest.FixtureRequest,
) -> None:
    alice = await make_user("alice")
    room = await agent_room(alice, bot, openai_server.agent())
    event_ids = [await alice.send_text(room, f"m{n}") for n in range(3)]
    for event_id in event_ids:
        await answers(alice, room, event_id, bot)

    rows = {r["event_id"]: r for r in await db_rows(bot, db_kind, request, "message")}
    assert [rows[e]["state"] for e in event_ids] == ["answered"] * 3
