"""The three backends against local fake servers: replies, streaming, the contract, failures."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from plugin.backends import backend_for, base
from plugin.backends.base import (
    AgentRequest,
    BackendBadResponse,
    BackendRateLimited,
    BackendRefused,
    BackendServerError,
    Turn,
)
from plugin.config import AgentSettings
from tests.fakes.fixtures import agent_server, openai_server  # noqa: F401
from tests.fakes.servers import Behavior, FakeAgentPlatform, FakeOpenAI, closed_port_url

SECRET = "sk-secret-key-123"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "SERVER_ERROR_BACKOFF", (0.01, 0.01))


def openai_agent(url: str, stream: bool = True) -> AgentSettings:
    return AgentSettings(
        id="assistant",
        name="Assistant",
        description="",
        backend="openai",
        base_url=url,
        api_key=SECRET,
        model="gpt-test",
        system_prompt="Be brief.",
        stream=stream,
    )


def http_agent(url: str, send_history: bool = False) -> AgentSettings:
    return AgentSettings(
        id="platform",
        name="Platform",
        description="",
        backend="http",
        url=url,
        headers={"X-Api-Key": SECRET},
        send_history=send_history,
    )


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


async def collect(agent: AgentSettings, http: aiohttp.ClientSession, text: str = "hello") -> list:
    return [d async for d in backend_for(agent, http).reply(request(agent, text))]


async def test_openai_without_streaming_sends_the_whole_conversation(
    openai_server: FakeOpenAI,  # noqa: F811
    http: aiohttp.ClientSession,
) -> None:
    deltas = await collect(openai_agent(openai_server.base_url, stream=False), http)

    assert deltas == ["reply to: hello"]
    (sent,) = openai_server.requests
    assert sent.body["model"] == "gpt-test"
    assert sent.body["stream"] is False
    assert [m["role"] for m in sent.body["messages"]] == ["system", "user", "assistant", "user"]
    assert "likes tea" in sent.body["messages"][0]["content"]
    assert sent.headers["Authorization"] == f"Bearer {SECRET}"


async def test_openai_streams_deltas(
    openai_server: FakeOpenAI,  # noqa: F811
    http: aiohttp.ClientSession,
) -> None:
    openai_server.script(Behavior(reply="one two three four", chunks=4))

    deltas = await collect(openai_agent(openai_server.base_url), http)

    assert len(deltas) == 4
    assert "".join(deltas) == "one two three four"
    assert openai_server.requests[0].body["stream"] is True


async def test_openai_server_that_ignores_stream_still_answers(
    openai_server: FakeOpenAI,  # noqa: F811
    http: aiohttp.ClientSession,
) -> None:
    openai_server.wants_stream = lambda body: False  # type: ignore[method-assign]

    assert await collect(openai_agent(openai_server.base_url), http) == ["reply to: hello"]


async def test_http_backend_contract_json_reply(
    agent_server: FakeAgentPlatform,  # noqa: F811
    http: aiohttp.ClientSession,
) -> None:
    deltas = await collect(http_agent(agent_server.chat_url), http)

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
    agent_server: FakeAgentPlatform,  # noqa: F811
    http: aiohttp.ClientSession,
) -> None:
    agent_server.script(Behavior(reply="a streamed platform answer", chunks=3))

    deltas = await collect(http_agent(agent_server.chat_url, send_history=True), http)

    assert len(deltas) == 3
    assert "".join(deltas) == "a streamed platform answer"
    assert agent_server.requests[0].body["history"] == [
        {"role": "user", "content": "earlier"},
        {"role": "assistant", "content": "earlier answer"},
    ]


async def test_echo_streams_the_message_and_context_size(
    http: aiohttp.ClientSession,
) -> None:
    echo = AgentSettings(id="echo", name="Echo", description="", backend="echo")

    chunks = await collect(echo, http, "ping pong")

    reply = "".join(chunks)
    assert len(chunks) > 3, "echo streams word by word"
    assert reply.startswith("ping pong")
    assert "3 turns, ~42 tokens, 1 memory entries" in reply


async def test_connection_refused(http: aiohttp.ClientSession) -> None:
    with pytest.raises(BackendRefused) as e:
        await collect(openai_agent(closed_port_url("/v1")), http)
    assert "connection refused" in e.value.describe()


async def test_server_errors_are_retried_twice_then_reported(
    openai_server: FakeOpenAI,  # noqa: F811
    http: aiohttp.ClientSession,
) -> None:
    openai_server.script(Behavior(status=500), Behavior(status=502))
    assert await collect(openai_agent(openai_server.base_url, stream=False), http) == [
        "reply to: hello"
    ]

    openai_server.requests.clear()
    openai_server.script(*[Behavior(status=503)] * 3)
    with pytest.raises(BackendServerError) as e:
        await collect(openai_agent(openai_server.base_url, stream=False), http)
    assert len(openai_server.requests) == 3
    assert "HTTP 503" in e.value.describe()


async def test_rate_limit_honours_retry_after(
    agent_server: FakeAgentPlatform,  # noqa: F811
    http: aiohttp.ClientSession,
) -> None:
    agent_server.script(Behavior(status=429, retry_after=0.3))
    started = time.monotonic()

    assert await collect(http_agent(agent_server.chat_url), http) == ["platform reply to: hello"]
    assert time.monotonic() - started >= 0.3

    agent_server.requests.clear()
    agent_server.script(*[Behavior(status=429, retry_after=0.05)] * 3)
    with pytest.raises(BackendRateLimited):
        await collect(http_agent(agent_server.chat_url), http)
    assert len(agent_server.requests) == 3


async def test_unexpected_answers_are_reported(
    agent_server: FakeAgentPlatform,  # noqa: F811
    http: aiohttp.ClientSession,
) -> None:
    agent_server.script(Behavior(status=401))
    with pytest.raises(BackendBadResponse, match="HTTP 401"):
        await collect(http_agent(agent_server.chat_url), http)

    agent_server.whole = lambda text: {"answer": text}  # type: ignore[method-assign]
    with pytest.raises(BackendBadResponse) as e:
        await collect(http_agent(agent_server.chat_url), http)
    assert '"reply"' in e.value.describe()


def test_secrets_stay_out_of_reprs_and_messages() -> None:
    agent = openai_agent("http://127.0.0.1:1/v1")
    req = request(agent)
    assert SECRET not in repr(req)
    assert SECRET not in repr(agent)
    for error in (BackendRefused(), BackendServerError(500), BackendRateLimited()):
        assert SECRET not in error.describe()
