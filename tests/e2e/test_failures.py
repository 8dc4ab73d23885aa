"""Every failure ends with one clear notice, keeps the message, and `!ai retry` recovers it."""

from __future__ import annotations

import json
import time

from tests.fakes.servers import SECRET, Behavior, FakeAgentPlatform, FakeOpenAI, closed_port_url
from tests.harness.deploy import Deployment
from tests.harness.flows import agent_room, onboard
from tests.harness.matrix_user import MatrixUser, Reply


async def answer(user: MatrixUser, bot: Deployment, room: str, event_id: str, start: str) -> Reply:
    """The bot's final reply to `event_id` whose text starts with `start`."""

    def find() -> Reply | None:
        for reply in user.replies_to(room, event_id, bot.bot_id):
            if reply.final and reply.body.startswith(start):
                return reply
        return None

    return await user.wait_for(find, 30, f"a reply starting {start!r}")


async def test_refused_agent_then_retry_after_the_fix(
    bot: Deployment,
    make_user,
    openai_server: FakeOpenAI,
) -> None:
    broken = {**openai_server.agent(stream=False), "base_url": closed_port_url("/v1")}
    alice = await make_user("alice")
    room = await agent_room(alice, bot, broken)

    event_id = await alice.send_text(room, "are you there?")
    notice = await alice.wait_for_reply(room, event_id, bot.bot_id)

    assert notice.content["msgtype"] == "m.notice"
    assert "Assistant failed: could not connect to it (connection refused)" in notice.body
    assert "`!ai retry`" in notice.body
    assert "Turns: 1 (1 unanswered)" in (await alice.ask(room, "!ai context", bot.bot_id)).body

    await bot.update_config(
        {"agents": [openai_server.agent(stream=False)], "default_agent": "assistant"}
    )
    await alice.send_text(room, "!ai retry")
    await answer(alice, bot, room, event_id, "reply to: are you there?")
    assert len(alice.replies_to(room, event_id, bot.bot_id)) == 2
    assert "(1 unanswered)" not in (await alice.ask(room, "!ai context", bot.bot_id)).body


async def test_timeout_server_errors_and_rate_limits(
    bot: Deployment,
    make_user,
    openai_server: FakeOpenAI,
) -> None:
    alice = await make_user("alice")
    room = await agent_room(alice, bot, openai_server.agent(stream=False), {"dispatch.timeout": 1})

    async def notice_for(text: str, *script: Behavior) -> str:
        openai_server.script(*script)
        event_id = await alice.send_text(room, text)
        reply = await alice.wait_for_reply(room, event_id, bot.bot_id, timeout=30)
        assert reply.content["msgtype"] == "m.notice", reply.body
        assert "`!ai retry`" in reply.body
        return reply.body

    assert "Assistant failed: it did not answer within 1 s" in await notice_for(
        "slow", Behavior(delay=3)
    )
    await bot.update_config(
        {"agents": [openai_server.agent(stream=False)], "default_agent": "assistant"}
    )

    sent = len(openai_server.requests)
    assert "failed (HTTP 500)" in await notice_for("broken", *[Behavior(status=500)] * 3)
    assert len(openai_server.requests) - sent == 3, "two retries after the first 5xx"

    event_id = await alice.send_text(room, "flaky")
    openai_server.script(Behavior(status=502))
    await answer(alice, bot, room, event_id, "reply to: flaky")

    openai_server.script(Behavior(status=429, retry_after=0.8))
    started = time.monotonic()
    reply = await alice.ask(room, "busy", bot.bot_id)
    assert reply.body == "reply to: busy"
    assert time.monotonic() - started >= 0.8, "Retry-After was honoured"

    sent = len(openai_server.requests)
    limited = [Behavior(status=429, retry_after=0.1)] * 3
    assert "rate limited" in await notice_for("too busy", *limited)
    assert len(openai_server.requests) - sent == 3

    # Nothing was lost: every failed message is still in the context, unanswered.
    shown = (await alice.ask(room, "!ai context", bot.bot_id)).body
    assert "Turns: 7 (3 unanswered)" in shown


async def test_broken_stream_closes_the_reply_with_a_notice(
    bot: Deployment,
    make_user,
    agent_server: FakeAgentPlatform,
) -> None:
    alice = await make_user("alice")
    room = await agent_room(alice, bot, agent_server.agent(), {"dispatch.edit_interval": 0.1})
    agent_server.script(Behavior(reply="a b c d e f g h", chunks=8, chunk_delay=0.2, break_after=4))

    event_id = await alice.send_text(room, "stream please")
    reply = await alice.wait_for_reply(room, event_id, bot.bot_id, timeout=30)

    assert reply.body.startswith("a b")
    assert "platform failed: the connection broke" in reply.body and "`!ai retry`" in reply.body
    assert len(alice.replies_to(room, event_id, bot.bot_id)) == 1, "one message, closed"


async def test_messages_per_minute_quota(
    bot: Deployment,
    make_user,
    openai_server: FakeOpenAI,
) -> None:
    alice = await make_user("alice")
    room = await agent_room(
        alice, bot, openai_server.agent(stream=False), {"limits.messages_per_minute": 2}
    )

    for n in range(2):
        await alice.ask(room, f"message {n}", bot.bot_id)
    over = await alice.send_text(room, "one too many")
    notice = await alice.wait_for_reply(room, over, bot.bot_id)

    assert "more than 2 messages in a minute" in notice.body
    assert len(openai_server.requests) == 2, "the message over the limit did not go out"


async def test_secrets_never_reach_rooms_or_logs(
    bot: Deployment,
    make_user,
    openai_server: FakeOpenAI,
    agent_server: FakeAgentPlatform,
) -> None:
    await bot.update_config(
        {
            "agents": [
                openai_server.agent(stream=False),
                agent_server.agent(),
            ],
            "default_agent": "assistant",
            "onboarding.rooms": ["assistant", "platform"],
        }
    )
    alice = await make_user("alice")
    rooms = (await onboard(alice, bot)).rooms
    openai_server.script(Behavior(status=401))
    agent_server.script(*[Behavior(status=503)] * 3)

    await alice.ask(rooms["assistant"], "hello", bot.bot_id)
    await alice.ask(rooms["platform"], "hello", bot.bot_id, timeout=30)
    await alice.ask(rooms["assistant"], "!ai context", bot.bot_id)

    assert openai_server.requests[0].headers["Authorization"] == f"Bearer {SECRET}"
    assert agent_server.requests[0].headers["X-Api-Key"] == SECRET
    for room in rooms.values():
        assert SECRET not in json.dumps(alice.timeline[room])
    assert SECRET not in bot.server.log_text()
