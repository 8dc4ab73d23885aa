"""The dispatcher in-process: filters, order, parallelism, streaming edits, failures, quotas."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from plugin import dispatch
from plugin.backends.base import AgentRequest, BackendServerError
from plugin.commands import UsageError
from plugin.matrix_send import RateLimited
from plugin.matrix_state import BINDING_TYPE, STREAMING_KEY
from tests.fakes.plugin_parts import Parts, make_event, make_parts, room_row

ROOM = "!room:example.org"
OTHER = "!other:example.org"
ALICE = "@alice:example.org"
AGENTS = [
    {"id": "echo", "name": "Echo", "backend": "echo"},
    {"id": "slow", "name": "Slow", "backend": "echo"},
]


class ScriptedBackend:
    """Answers "re: <text>" in `chunks` deltas, `gap` seconds apart; records every call."""

    def __init__(self) -> None:
        self.calls: list[AgentRequest] = []
        self.active = 0
        self.max_active = 0
        self.gap = 0.0
        self.chunks = 1
        self.fail: Callable[[int], Exception | None] = lambda n: None
        self.fail_after_chunks: int | None = None

    async def reply(self, request: AgentRequest) -> AsyncIterator[str]:
        self.calls.append(request)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            error = self.fail(len(self.calls))
            if error is not None and self.fail_after_chunks is None:
                raise error
            text = f"re: {request.text}"
            size = -(-len(text) // self.chunks)
            for n, start in enumerate(range(0, len(text), size)):
                if error is not None and n == self.fail_after_chunks:
                    raise error
                await asyncio.sleep(self.gap)
                yield text[start : start + size]
        finally:
            self.active -= 1


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> ScriptedBackend:
    scripted = ScriptedBackend()
    monkeypatch.setattr(dispatch, "backend_for", lambda agent, http: scripted)
    return scripted


@pytest.fixture
async def parts(tmp_path: Path, backend: ScriptedBackend) -> AsyncIterator[Parts]:
    parts = await make_parts(
        tmp_path / "plugin.db", agents=AGENTS, **{"dispatch.edit_interval": 0.0}
    )
    await parts.store.upsert_room(room_row(ROOM))
    await parts.store.upsert_room(room_row(OTHER, agent_id="slow"))
    yield parts
    await parts.close()


async def settle(parts: Parts, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while parts.dispatcher.queue_depth():
        assert time.monotonic() < deadline, "the queues did not drain"
        await asyncio.sleep(0.01)


def contents(parts: Parts, room_id: str = ROOM) -> list[dict[str, Any]]:
    return [s.content for s in parts.client.sent if s.room_id == room_id]


async def test_filters_commands_notices_edits_others_and_the_bots_own(parts: Parts) -> None:
    ignored = [
        make_event(ROOM, "!ai help"),
        make_event(ROOM, "a notice", msgtype="m.notice"),
        make_event(ROOM, "* fixed", relates_to={"rel_type": "m.replace", "event_id": "$x"}),
        make_event(ROOM, "hi", sender="@mallory:example.org"),
        make_event(ROOM, "my own", sender=parts.client.mxid),
        make_event("!unmanaged:example.org", "hi"),
    ]
    for evt in ignored:
        await parts.dispatcher.on_message(evt)
    await parts.dispatcher.on_message(make_event(ROOM, "!aiden is not a command"))
    await settle(parts)

    assert [c["body"] for c in contents(parts)] == ["re: !aiden is not a command"]


async def test_admin_may_talk_in_any_room(parts: Parts) -> None:
    parts.configure(agents=AGENTS, **{"access.admins": ["@root:example.org"]})

    assert await parts.dispatcher.accepts(make_event(ROOM, "hi", sender="@root:example.org"))
    await parts.store.set_room_state(ROOM, "archived")
    assert not await parts.dispatcher.accepts(make_event(ROOM, "hi"))


async def test_an_event_is_answered_once(parts: Parts, backend: ScriptedBackend) -> None:
    evt = make_event(ROOM, "hello")

    assert await parts.dispatcher.submit(evt) is True
    assert await parts.dispatcher.submit(evt) is False
    await parts.dispatcher.on_message(evt)
    await settle(parts)

    assert len(backend.calls) == 1
    assert parts.client.final_texts(ROOM) == {evt.event_id: "re: hello"}
    room = await parts.store.get_room(ROOM)
    assert (room.last_event_id, room.last_event_ts) == (evt.event_id, evt.timestamp)
    assert parts.metrics.messages_in == 1
    assert parts.metrics.messages_out == 1


async def test_one_room_is_fifo_and_rooms_run_in_parallel(
    parts: Parts, backend: ScriptedBackend
) -> None:
    backend.gap = 0.05
    events = [make_event(ROOM, f"m{n}") for n in range(5)] + [make_event(OTHER, "other")]

    await asyncio.gather(*(parts.dispatcher.on_message(evt) for evt in events))
    await settle(parts)

    room_calls = [c for c in backend.calls if c.room_id == ROOM]
    assert [c.text for c in room_calls] == [f"m{n}" for n in range(5)]
    assert backend.max_active == 2
    texts = parts.client.final_texts(ROOM)
    assert [texts[evt.event_id] for evt in events[:5]] == [f"re: m{n}" for n in range(5)]
    # Each message saw the ones before it and their answers.
    assert len(room_calls[4].history) == 8


async def test_global_concurrency_limit(parts: Parts, backend: ScriptedBackend) -> None:
    parts.configure(agents=AGENTS, **{"dispatch.max_concurrency": 2})
    backend.gap = 0.05
    rooms = [f"!r{n}:example.org" for n in range(6)]
    for room_id in rooms:
        await parts.store.upsert_room(room_row(room_id))

    for room_id in rooms:
        await parts.dispatcher.on_message(make_event(room_id, "hi"))
    assert parts.dispatcher.queue_depth() == 6
    await settle(parts)

    assert backend.max_active == 2
    assert len(backend.calls) == 6


async def test_streaming_edits_are_bounded_then_one_final_edit(
    parts: Parts, backend: ScriptedBackend
) -> None:
    parts.configure(agents=AGENTS, **{"dispatch.edit_interval": 0.05, "dispatch.max_edits": 3})
    backend.chunks, backend.gap = 12, 0.03
    evt = make_event(ROOM, "tell me a **long** story")

    await parts.dispatcher.on_message(evt)
    await settle(parts)

    first, *edits = contents(parts)
    assert first[STREAMING_KEY] is True
    assert first["m.relates_to"] == {"m.in_reply_to": {"event_id": evt.event_id}}
    *intermediate, final = edits
    assert 1 <= len(intermediate) <= 3
    for edit in intermediate:
        assert edit[STREAMING_KEY] is True and edit["m.new_content"][STREAMING_KEY] is True
    assert STREAMING_KEY not in final and STREAMING_KEY not in final["m.new_content"]
    assert final["m.new_content"]["body"] == "re: tell me a **long** story"
    assert final["m.new_content"]["formatted_body"] == (
        "<p>re: tell me a <strong>long</strong> story</p>"
    )
    assert final["m.relates_to"]["rel_type"] == "m.replace"
    assert parts.client.typing[0][1] > 0 and parts.client.typing[-1] == (ROOM, 0)


async def test_a_quick_answer_is_one_message_and_stays_in_its_thread(parts: Parts) -> None:
    parts.configure(agents=AGENTS, **{"dispatch.edit_interval": 5.0})
    evt = make_event(
        ROOM,
        "in a thread",
        relates_to={
            "rel_type": "m.thread",
            "event_id": "$root",
            "is_falling_back": True,
            "m.in_reply_to": {"event_id": "$root"},
        },
    )

    await parts.dispatcher.on_message(evt)
    await settle(parts)

    (only,) = contents(parts)
    assert STREAMING_KEY not in only
    assert only["m.relates_to"] == {
        "rel_type": "m.thread",
        "event_id": "$root",
        "is_falling_back": False,
        "m.in_reply_to": {"event_id": evt.event_id},
    }


async def test_matrix_rate_limit_waits_retry_after_and_resends(parts: Parts) -> None:
    parts.client.rate_limited, parts.client.retry_after_ms = 2, 150
    evt = make_event(ROOM, "hello")
    started = time.monotonic()

    await parts.dispatcher.on_message(evt)
    await settle(parts)

    assert time.monotonic() - started >= 0.3
    assert parts.client.rate_limit_hits == 2
    assert parts.client.final_texts(ROOM) == {evt.event_id: "re: hello"}


def test_matrix_rate_limit_without_retry_after_backs_off() -> None:
    error = RateLimited(None)
    assert [dispatch._retry_after_ms(error, n) for n in (1, 2, 3)] == [1000, 2000, 4000]
    assert dispatch._retry_after_ms(RateLimited(250), 3) == 250
    assert dispatch._retry_after_ms(RateLimited(10**9), 1) == dispatch.MAX_MATRIX_RETRY_MS


async def test_backend_failure_gives_one_notice_and_retry_answers(
    parts: Parts, backend: ScriptedBackend
) -> None:
    backend.fail = lambda n: BackendServerError(503) if n == 1 else None
    evt = make_event(ROOM, "hello")

    await parts.dispatcher.on_message(evt)
    await settle(parts)

    (notice,) = contents(parts)
    assert notice["msgtype"] == "m.notice"
    assert "HTTP 503" in notice["body"] and "`!ai retry`" in notice["body"]
    assert notice["m.relates_to"] == {"m.in_reply_to": {"event_id": evt.event_id}}
    (turn,) = await parts.store.turns(ROOM)
    assert (turn.event_id, turn.answered) == (evt.event_id, False)
    assert parts.metrics.errors_by_kind["backend_server_error"] == 1

    room = await parts.store.get_room(ROOM)
    await parts.dispatcher.retry(room, make_event(ROOM, "!ai retry"))
    await settle(parts)

    assert contents(parts)[-1]["body"] == "re: hello"
    assert contents(parts)[-1]["m.relates_to"] == {"m.in_reply_to": {"event_id": evt.event_id}}
    user, answer = await parts.store.turns(ROOM)
    assert user.answered and answer.content == "re: hello"


async def test_failure_mid_stream_closes_the_partial_reply_with_the_notice(
    parts: Parts, backend: ScriptedBackend
) -> None:
    backend.chunks, backend.gap, backend.fail_after_chunks = 6, 0.02, 3
    backend.fail = lambda n: BackendServerError(500)

    await parts.dispatcher.on_message(make_event(ROOM, "a long question"))
    await settle(parts)

    final = contents(parts)[-1]
    assert STREAMING_KEY not in final["m.new_content"]
    assert final["m.new_content"]["body"].startswith("re: a long")
    assert "HTTP 500" in final["m.new_content"]["body"]


async def test_timeout_gives_a_notice(parts: Parts, backend: ScriptedBackend) -> None:
    parts.configure(agents=AGENTS, **{"dispatch.timeout": 1})
    backend.gap = 3

    await parts.dispatcher.on_message(make_event(ROOM, "hello"))
    await settle(parts)

    (notice,) = contents(parts)
    assert "did not answer within 1 s" in notice["body"]


async def test_retry_of_an_answered_message_replaces_its_answer(
    parts: Parts, backend: ScriptedBackend
) -> None:
    first, second = make_event(ROOM, "one"), make_event(ROOM, "two")
    await parts.dispatcher.on_message(first)
    await parts.dispatcher.on_message(second)
    await settle(parts)
    room = await parts.store.get_room(ROOM)

    await parts.dispatcher.retry(room, make_event(ROOM, "!ai retry"))
    await settle(parts)

    assert backend.calls[-1].text == "two"
    assert [t.content for t in backend.calls[-1].history] == ["one", "re: one"]
    assert [t.content for t in await parts.store.turns(ROOM)] == [
        "one",
        "re: one",
        "two",
        "re: two",
    ]


async def test_compact_summarises_into_a_new_context(
    parts: Parts, backend: ScriptedBackend
) -> None:
    await parts.dispatcher.on_message(make_event(ROOM, "one"))
    await settle(parts)
    room = await parts.store.get_room(ROOM)
    command = make_event(ROOM, "!ai context compact")

    await parts.dispatcher.compact(room, command)
    await settle(parts)

    assert "Summarise our conversation" in backend.calls[-1].text
    (summary,) = await parts.store.turns(ROOM)
    assert summary.role == "system" and "re: Summarise" in summary.content
    binding = parts.client.account_data[(ROOM, BINDING_TYPE)]
    assert binding["context_start"] == command.event_id
    assert binding["chat_id"] != room.chat_id
    assert "Context compacted" in contents(parts)[-1]["body"]


async def test_messages_per_minute_quota(parts: Parts, backend: ScriptedBackend) -> None:
    parts.configure(agents=AGENTS, **{"limits.messages_per_minute": 2})

    for n in range(4):
        await parts.dispatcher.on_message(make_event(ROOM, f"m{n}"))
    await settle(parts)

    assert [c.text for c in backend.calls] == ["m0", "m1"]
    notices = [c for c in contents(parts) if c["msgtype"] == "m.notice"]
    assert len(notices) == 1, "one notice, not one per message"
    assert "more than 2 messages in the last minute" in notices[0]["body"]


async def test_daily_token_quota(parts: Parts, backend: ScriptedBackend) -> None:
    parts.configure(agents=AGENTS, **{"limits.daily_tokens": 5})

    await parts.dispatcher.on_message(make_event(ROOM, "a message of a few tokens"))
    await parts.dispatcher.on_message(make_event(ROOM, "over the limit now"))
    await settle(parts)

    assert [c.text for c in backend.calls] == ["a message of a few tokens"]
    assert "today's allowance of 5 tokens" in contents(parts)[-1]["body"]


async def test_stop_unclaims_what_was_not_answered(parts: Parts, backend: ScriptedBackend) -> None:
    backend.gap = 1
    events = [make_event(ROOM, f"m{n}") for n in range(3)]
    for evt in events:
        await parts.dispatcher.on_message(evt)
    await asyncio.sleep(0.05)

    await parts.dispatcher.stop()

    for evt in events:
        assert not await parts.store.is_processed(evt.event_id)
    assert await parts.dispatcher.submit(events[0]) is False, "nothing is claimed after stop"
    assert not await parts.store.is_processed(events[0].event_id)


async def test_retry_waits_for_the_answer_on_its_way(
    parts: Parts, backend: ScriptedBackend
) -> None:
    backend.gap = 0.2
    await parts.dispatcher.on_message(make_event(ROOM, "hello"))
    room = await parts.store.get_room(ROOM)

    with pytest.raises(UsageError, match="still on its way"):
        await parts.dispatcher.retry(room, make_event(ROOM, "!ai retry"))
    await settle(parts)
    assert len(backend.calls) == 1
