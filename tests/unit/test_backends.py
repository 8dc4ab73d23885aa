"""The three backends against local fake servers: replies, streaming, the contract, failures."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from plugin.agents import backend_for, base
from plugin.agents.base import (
    AgentRequest,
    BackendBadResponse,
    BackendRateLimited,
    BackendRefused,
    BackendRejected,
    BackendServerError,
    Turn,
)
from plugin.ops.settings import AgentSettings
from tests.config import agent_settings, settings
from tests.fakes.servers import SECRET, Behavior, FakeAgentPlatform, FakeOpenAI, closed_port_url


def openai_agent(server: FakeOpenAI, **extra: Any) -> AgentSettings:
    return agent_settings(server.agent(**extra))


def http_agent(server: FakeAgentPlatform, **extra: Any) -> AgentSettings:
    return agent_settings(server.agent(**extra))


def unreachable_agent() -> AgentSettings:
    """An openai agent whose server refuses connections."""
    return agent_settings(FakeOpenAI().agent(base_url=closed_port_url("/v1")))


def request(agent: AgentSettings, text: str = "hello") -> AgentRequest:
    return AgentRequest(
        agent=agent,
        chat_id="chat-1",
        room_id="!room:example.org",
        sender="@alice:example.org",
        event_id="$ev",
        text=text,
        system_prompt="Be brief.\n\nWhat the user asked you to remember:\n- likes tea",
        memory=("likes tea",),
        history=(Turn("user", "earlier"), Turn("assistant", "earlier answer")),
        context_tokens=42,
    )


async def collect(agent: AgentSettings, text: str = "hello") -> list[str]:
    async with aiohttp.ClientSession() as http:
        return [d async for d in backend_for(agent, http).reply(request(agent, text))]


async def test_openai_without_streaming_sends_the_whole_conversation(
    openai_server: FakeOpenAI,
) -> None:
    deltas = await collect(openai_agent(openai_server, stream=False))

    assert deltas == ["reply to: hello"]
    (sent,) = openai_server.requests
    assert sent.body["model"] == "fake-model"
    assert sent.body["stream"] is False
    assert [m["role"] for m in sent.body["messages"]] == ["system", "user", "assistant", "user"]
    assert "likes tea" in sent.body["messages"][0]["content"]
    assert sent.headers["Authorization"] == f"Bearer {SECRET}"


async def test_openai_streams_deltas(openai_server: FakeOpenAI) -> None:
    openai_server.script(Behavior(reply="one two three four", chunks=4))

    deltas = await collect(openai_agent(openai_server))

    assert len(deltas) == 4
    assert "".join(deltas) == "one two three four"
    assert openai_server.requests[0].body["stream"] is True


async def test_openai_server_that_ignores_stream_still_answers(openai_server: FakeOpenAI) -> None:
    openai_server.wants_stream = lambda body: False  # type: ignore[method-assign]

    assert await collect(openai_agent(openai_server)) == ["reply to: hello"]


async def test_http_backend_contract_json_reply(agent_server: FakeAgentPlatform) -> None:
    deltas = await collect(http_agent(agent_server))

    assert deltas == ["platform reply to: hello"]
    (sent,) = agent_server.requests
    assert sent.body == {
        "chat_id": "chat-1",
        "agent": "platform",
        "room_id": "!room:example.org",
        "sender": "@alice:example.org",
        "event_id": "$ev",
        "text": "hello",
        "memory": ["likes tea"],
    }
    assert sent.headers["X-Api-Key"] == SECRET


async def test_http_backend_sends_history_when_asked_and_streams_deltas(
    agent_server: FakeAgentPlatform,
) -> None:
    agent_server.script(Behavior(reply="a streamed platform answer", chunks=3))

    deltas = await collect(http_agent(agent_server, send_history=True))

    assert len(deltas) == 3
    assert "".join(deltas) == "a streamed platform answer"
    assert agent_server.requests[0].body["history"] == [
        {"role": "user", "content": "earlier"},
        {"role": "assistant", "content": "earlier answer"},
    ]


async def test_echo_streams_the_message_and_context_size() -> None:
    chunks = await collect(settings().agents["echo"], "ping pong")

    reply = "".join(chunks)
    assert len(chunks) > 3, "echo streams word by word"
    assert reply.startswith("ping pong")
    assert "3 turns, ~42 tokens, 1 memory entries" in reply


async def test_connection_refused() -> None:
    with pytest.raises(BackendRefused) as e:
        await collect(unreachable_agent())
    assert "connection refused" in e.value.describe()


async def test_server_errors_are_retried_twice_then_reported(
    openai_server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base, "SERVER_ERROR_BACKOFF", (0.01, 0.01))
    openai_server.script(Behavior(status=500), Behavior(status=502))
    assert await collect(openai_agent(openai_server, stream=False)) == ["reply to: hello"]

    openai_server.requests.clear()
    openai_server.script(*[Behavior(status=503)] * 3)
    with pytest.raises(BackendServerError) as e:
        await collect(openai_agent(openai_server, stream=False))
    assert len(openai_server.requests) == 3
    assert "HTTP 503" in e.value.describe()


async def test_rate_limit_honours_retry_after(agent_server: FakeAgentPlatform) -> None:
    agent_server.script(Behavior(status=429, retry_after=0.3))
    started = time.monotonic()

    assert await collect(http_agent(agent_server)) == ["platform reply to: hello"]
    assert time.monotonic() - started >= 0.3

    agent_server.requests.clear()
    agent_server.script(*[Behavior(status=429, retry_after=0.05)] * 3)
    with pytest.raises(BackendRateLimited):
        await collect(http_agent(agent_server))
    assert len(agent_server.requests) == 3


async def test_unexpected_answers_are_reported(agent_server: FakeAgentPlatform) -> None:
    agent_server.script(Behavior(status=401))
    with pytest.raises(BackendRejected, match="HTTP 401") as refused:
        await collect(http_agent(agent_server))
    assert refused.value.describe() == "its server refused the request (HTTP 401)"

    agent_server.whole = lambda text: {"answer": text}  # type: ignore[method-assign]
    with pytest.raises(BackendBadResponse) as e:
        await collect(http_agent(agent_server))
    assert '"reply"' in e.value.describe()


def test_secrets_stay_out_of_reprs_and_messages() -> None:
    agent = unreachable_agent()
    req = request(agent)
    assert SECRET not in repr(req)
    assert SECRET not in repr(agent)
    errors = (BackendRefused(), BackendServerError(500), BackendRateLimited(), BackendRejected(403))
    for error in errors:
        assert SECRET not in error.describe()
