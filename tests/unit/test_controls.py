"""Reactions as controls (⏹️ stop, 🔁 regenerate, 👍/👎 feedback), real token usage from the
backends, and the config and metrics that go with them."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from plugin.agents import backend_for
from plugin.agents.base import AgentRequest, Turn, Usage
from plugin.agents.feedback import feedback_payload, send_feedback
from plugin.db import Store
from plugin.db.rows import ANSWERED, ANSWERING, RoomRow
from plugin.matrix.identity import AgentIdentity
from plugin.matrix.replies import STREAMING_KEY
from plugin.ops.config import ConfigError
from plugin.ops.metrics import Metrics
from tests.config import agent_settings, settings
from tests.fakes.matrix import ALICE
from tests.fakes.servers import AVATAR_PNG, Behavior, FakeAgentPlatform, FakeOpenAI
from tests.fakes.world import ScriptedAgent, World, make_world, script_agent, scripted_room

ROOM = "!room:example.org"
BOB = "@bob:example.org"
CONFIG = {"dispatch.edit_interval": 0.0}


async def prepare(world: World, monkeypatch: pytest.MonkeyPatch) -> tuple[ScriptedAgent, RoomRow]:
    return await scripted_room(world, monkeypatch, ROOM, CONFIG)


def first_reply(world: World, event_id: str) -> str:
    for sent in world.fake.messages(ROOM):
        if (sent.content.get("m.relates_to") or {}).get("m.in_reply_to", {}).get(
            "event_id"
        ) == event_id:
            return sent.event_id
    raise AssertionError(f"no reply to {event_id}")


async def test_stop_ends_a_streaming_answer_with_a_note(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = script_agent(monkeypatch)
    backend.chunks, backend.gap = 50, 0.05
    world.configure(CONFIG)
    await world.add_room(ROOM)
    question = await world.say(ROOM, "a long one " * 10)
    for _ in range(500):
        if world.fake.messages(ROOM):
            break
        await asyncio.sleep(0.01)
    answer = first_reply(world, question.event_id)

    await world.parts.reactions.on_reaction(world.fake.reaction(ROOM, answer, "🔁", BOB))
    await world.parts.reactions.on_reaction(world.fake.reaction(ROOM, answer, "⏹", BOB))
    assert len(world.parts.reactions.running) == 1, "a stranger's stop is ignored"
    await world.parts.reactions.on_reaction(world.fake.reaction(ROOM, answer, "⏹️"))
    await world.settle()

    text = world.fake.final_texts(ROOM)[question.event_id]
    assert text.endswith("(Stopped.)") and len(text) < len("re: " + "a long one " * 10)
    assert backend.active == 0, "the agent's stream was closed"
    assert len(world.parts.reactions.running) == 0
    (turn,) = [t for t in await world.store.turns.of_room(ROOM) if t.role == "assistant"]
    assert turn.content == text


async def test_regenerate_edits_the_answer_from_the_same_context(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, _ = await prepare(world, monkeypatch)
    first = await world.say(ROOM, "q1")
    await world.say(ROOM, "q2")
    await world.settle()
    answer = first_reply(world, first.event_id)
    sent_before = len([s for s in world.fake.messages(ROOM) if "m.new_content" not in s.content])
    backend.extra = " (again)"

    await world.parts.reactions.on_reaction(world.fake.reaction(ROOM, answer, "🔁️"))
    await world.settle()

    assert world.fake.final_texts(ROOM)[first.event_id] == "re: q1 (again)"
    sent_after = len([s for s in world.fake.messages(ROOM) if "m.new_content" not in s.content])
    assert sent_after == sent_before, "an edit, no new message"
    assert backend.calls[-1].history == backend.calls[0].history == ()
    assert backend.calls[-1].text == "q1"
    turns = [t.content for t in await world.store.turns.of_room(ROOM)]
    assert turns == ["q1", "re: q1 (again)", "q2", "re: q2"]


async def test_feedback_is_counted_by_agent(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    await prepare(world, monkeypatch)
    question = await world.say(ROOM, "rate me")
    await world.settle()
    answer = first_reply(world, question.event_id)

    await world.parts.reactions.on_reaction(world.fake.reaction(ROOM, answer, "👍"))
    await world.parts.reactions.on_reaction(world.fake.reaction(ROOM, answer, "👎", BOB))
    await world.parts.reactions.on_reaction(world.fake.reaction(ROOM, question.event_id, "👎"))

    assert dict(world.metrics.feedback_by_agent) == {("echo", "up"): 1}
    (row,) = await world.store.feedback.of_room(ROOM)
    assert (row.event_id, row.user_id, row.agent_id, row.rating) == (answer, ALICE, "echo", "up")
    # A new rating of the same answer replaces the person's earlier one.
    await world.parts.reactions.on_reaction(world.fake.reaction(ROOM, answer, "👎"))
    assert [row.rating for row in await world.store.feedback.of_room(ROOM)] == ["down"]
    assert 'agentspaces_feedback_total{agent="echo",rating="up"} 1' in world.metrics.render(0)


async def test_an_http_agent_receives_feedback(agent_server: FakeAgentPlatform) -> None:
    agent = agent_settings(agent_server.agent())
    body = feedback_payload(agent, "chat", ROOM, ALICE, "$answer", "$question", "down")
    async with aiohttp.ClientSession() as http:
        await send_feedback(http, agent, body)
    assert agent_server.feedback == [body]
    assert agent_server.requests == []


def request(agent: object, shared: bool = False) -> AgentRequest:
    return AgentRequest(
        agent=agent,  # type: ignore[arg-type]
        chat_id="c",
        room_id=ROOM,
        sender=BOB,
        event_id="$e",
        text="now",
        system_prompt="",
        memory=(),
        history=(Turn("user", "earlier", ALICE), Turn("assistant", "answer")),
        shared=shared,
    )


async def collect(agent: object, shared: bool = False) -> list[object]:
    async with aiohttp.ClientSession() as http:
        backend = backend_for(agent, http)  # type: ignore[arg-type]
        return [d async for d in backend.reply(request(agent, shared))]


@pytest.mark.parametrize("stream", [True, False])
async def test_openai_reports_usage_and_names_senders_in_shared_rooms(
    openai_server: FakeOpenAI, stream: bool
) -> None:
    openai_server.default = Behavior(usage={"prompt_tokens": 7, "completion_tokens": 3})
    agent = agent_settings(openai_server.agent(stream=stream))

    deltas = await collect(agent, shared=True)

    assert deltas[-1] == Usage(7, 3) and "".join(d for d in deltas if isinstance(d, str))
    body = openai_server.requests[0].body
    assert body.get("stream_options") == ({"include_usage": True} if stream else None)
    users = [m for m in body["messages"] if m["role"] == "user"]
    assert [m["name"] for m in users] == ["alice", "bob"]
    await collect(agent, shared=False)
    assert all("name" not in m for m in openai_server.requests[1].body["messages"])


async def test_http_history_carries_senders_and_usage(agent_server: FakeAgentPlatform) -> None:
    agent_server.default = Behavior(usage={"prompt_tokens": 1, "completion_tokens": 2}, chunks=2)
    agent = agent_settings(agent_server.agent(send_history=True))

    deltas = await collect(agent)

    assert deltas[-1] == Usage(1, 2)
    history = agent_server.requests[0].body["history"]
    assert history == [
        {"role": "user", "content": "earlier", "sender": ALICE},
        {"role": "assistant", "content": "answer"},
    ]


async def test_reported_usage_counts_against_the_daily_tokens(
    store: Store, openai_server: FakeOpenAI
) -> None:
    openai_server.default = Behavior(usage={"prompt_tokens": 500, "completion_tokens": 100})
    agent = openai_server.agent("counted", stream=False)
    config = {**CONFIG, "agents": [agent], "default_agent": "counted", "limits.daily_tokens": 550}
    async with aiohttp.ClientSession() as http:
        world = make_world(store, http, config)
        try:
            await world.add_room(ROOM, agent_id="counted")
            await world.say(ROOM, "one")
            await world.settle()
            await world.say(ROOM, "two")
            await world.settle()
        finally:
            await world.close()

    (row,) = await store.agent_usage.since(ALICE, "2000-01-01")
    assert (row.agent_id, row.messages, row.tokens) == ("counted", 1, 600)
    assert world.metrics.tokens_by_agent["counted"] == 600
    assert "allowance of 550 tokens" in world.fake.bodies(ROOM)[-1]


def test_config_of_threads_group_trigger_and_avatars() -> None:
    assert settings({"rooms.threads": "off"}).threads is False
    assert settings({"rooms.threads": True}).threads is True
    assert settings().threads is True and settings().group_trigger == "mention"
    for bad in ({"rooms.threads": "maybe"}, {"rooms.group_trigger": "always"}):
        with pytest.raises(ConfigError):
            settings(bad)
    agent = {"id": "a", "backend": "echo", "avatar": "ftp://x/a.png"}
    with pytest.raises(ConfigError, match=r"agents\[0\].avatar"):
        settings({"agents": [agent], "default_agent": "a"})


async def test_an_avatar_url_is_uploaded_once(world: World, openai_server: FakeOpenAI) -> None:
    agent = agent_settings(
        {"id": "a", "backend": "echo", "avatar": f"{openai_server.url}/avatar.png"}
    )
    async with aiohttp.ClientSession() as http:
        log = logging.getLogger("test")
        identity = AgentIdentity(world.fake, world.parts.outbox, world.store, http, log)  # type: ignore[arg-type]
        first = await identity.avatar_uri(agent)
        again = await identity.avatar_uri(agent)
    assert first.startswith("mxc://") and again == first
    uploaded = [world.fake.media[mxc] for mxc, _, _ in world.fake.uploads]
    assert uploaded == [AVATAR_PNG] and openai_server.avatar_downloads == 1


def test_metrics_render_tokens_by_agent() -> None:
    metrics = Metrics()
    metrics.tokens("a", 5)
    metrics.tokens("a", 7)
    assert 'agentspaces_tokens_total{agent="a"} 12' in metrics.render(0)


async def test_a_regeneration_cut_off_by_a_restart_is_completed_in_place(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, _ = await prepare(world, monkeypatch)
    question = await world.say(ROOM, "q1")
    await world.settle()
    answer = first_reply(world, question.event_id)
    # The bot went down while it regenerated: the answer shows a streaming edit, and the
    # message is being answered again.
    partial = {"msgtype": "m.text", "body": "re: q", STREAMING_KEY: True}
    world.fake.message(
        ROOM,
        "* re: q",
        world.fake.mxid,
        relates_to={"rel_type": "m.replace", "event_id": answer},
        extra={"m.new_content": partial},
    )
    await world.store.messages.set_state(question.event_id, ANSWERING)
    backend.extra = " (again)"

    restarted = make_world(world.store, fake=world.fake, overrides=CONFIG)
    try:
        await restarted.parts.startup.catch_up.run()
        await restarted.settle()
    finally:
        await restarted.close()

    assert world.fake.final_texts(ROOM)[question.event_id] == "re: q1 (again)"
    turns = [t.content for t in await world.store.turns.of_room(ROOM)]
    assert turns == ["q1", "re: q1 (again)"], "the answer's turn replaced, not doubled"
    assert (await world.store.messages.states([question.event_id]))[question.event_id] == ANSWERED
