"""`!ai context`, `context clear|compact|share` and `!ai retry`, sent as the owner sends them."""

from __future__ import annotations

import pytest
from mautrix.types import MessageEvent

from plugin.agents.base import BackendServerError
from plugin.conversation import matrix_retry
from plugin.conversation.context import SUMMARY_PREFIX
from plugin.matrix.binding import BINDING_TYPE
from tests.fakes.matrix import ALICE
from tests.fakes.world import ScriptedAgent, World, script_agent

ROOM = "!room:example.org"


async def prepare(world: World, monkeypatch: pytest.MonkeyPatch) -> ScriptedAgent:
    backend = script_agent(monkeypatch)
    await world.add_room(ROOM)
    return backend


async def converse(world: World, *texts: str) -> list[MessageEvent]:
    """Messages of the owner, each answered before the next."""
    events = []
    for text in texts:
        events.append(await world.say(ROOM, text))
        await world.settle()
    return events


async def run(world: World, args: str) -> tuple[MessageEvent, str]:
    """A command, once its room's queue is done, and the bot's reply to it."""
    evt = await world.command(ROOM, args)
    await world.settle()
    return evt, world.fake.final_texts(ROOM).get(evt.event_id, "")


async def test_context_shows_turns_tokens_chat_id_and_memory(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    await world.store.memory.add(ALICE, "tea")
    await converse(world, "hello")
    backend.fail = lambda n: BackendServerError(500)
    await converse(world, "this one failed")
    room = await world.room(ROOM)

    _, text = await run(world, "context")

    lines = text.split("\n")
    assert lines[0] == "**Context of this room** (agent Echo)"
    assert lines[1] == "- Turns: 3 (1 unanswered)"
    assert lines[2].startswith("- Estimated tokens: ")
    assert lines[2].endswith(" of 8000 (system prompt and memory included)")
    assert lines[3] == f"- Chat id: `{(room.chat_id or '')[:8]}`"
    assert lines[4] == "- Shared memory: on (1 entries)"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            "context wipe",
            "Unknown `!ai context wipe`. "
            "Use `context`, `context clear`, `context compact` or `context share on|off`.",
        ),
        ("context compact", "Nothing to compact: this room's context is empty."),
        ("context share maybe", "Say `!ai context share on` or `!ai context share off`."),
        ("retry", "Nothing to retry: this room's context has no message yet."),
    ],
)
async def test_a_command_that_cannot_run_says_what_to_do(
    world: World, monkeypatch: pytest.MonkeyPatch, args: str, expected: str
) -> None:
    backend = await prepare(world, monkeypatch)

    _, text = await run(world, args)

    assert text == expected
    assert backend.calls == []
    assert (ROOM, BINDING_TYPE) not in world.fake.account_data


async def test_context_of_a_room_whose_agent_is_gone(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await prepare(world, monkeypatch)
    world.configure(
        {
            "agents": [{"id": "other", "name": "Other", "backend": "echo"}],
            "default_agent": "other",
            "onboarding.rooms": ["other"],
        }
    )

    _, text = await run(world, "context")

    assert text == "This room's agent `echo` is not configured any more."


async def test_clear_starts_a_new_context_with_a_new_chat_id(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    await converse(world, "before")
    old = await world.room(ROOM)

    command, text = await run(world, "context clear")

    binding = world.fake.account_data[(ROOM, BINDING_TYPE)]
    assert binding["chat_id"] != old.chat_id
    assert binding["context_start"] == command.event_id
    assert text == f"Context cleared. New chat id: `{binding['chat_id'][:8]}`."
    await converse(world, "after")
    assert backend.calls[-1].history == ()
    assert backend.calls[-1].chat_id == binding["chat_id"]


async def test_compact_answers_from_the_queue_with_the_summary(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    await converse(world, "one", "two")

    old = await world.room(ROOM)

    command, text = await run(world, "context compact")

    assert "Summarise our conversation" in backend.calls[-1].text
    assert [t.content for t in backend.calls[-1].history] == ["one", "re: one", "two", "re: two"]
    binding = world.fake.account_data[(ROOM, BINDING_TYPE)]
    assert binding["context_start"] == command.event_id
    assert binding["chat_id"] != old.chat_id
    assert text.startswith(
        f"Context compacted: 4 turns became this summary, the first turn of a new context "
        f"(chat `{binding['chat_id'][:8]}`)."
    )
    (summary,) = await world.store.turns.of_room(ROOM)
    assert summary.content == SUMMARY_PREFIX + "re: " + backend.calls[-1].text
    await converse(world, "three")
    assert [t.role for t in backend.calls[-1].history] == ["system"]


async def test_a_compaction_that_fails_leaves_the_context_as_it_was(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    await converse(world, "one")
    backend.fail = lambda n: BackendServerError(502)

    _, agent_failed = await run(world, "context compact")
    backend.fail = lambda n: None
    # The homeserver keeps refusing the binding: each try of the compaction fails in Matrix.
    monkeypatch.setattr(matrix_retry, "MATRIX_RETRY_WAITS", (0.0, 0.0))
    world.fake.fail[f"account_data:{BINDING_TYPE}"] = 3
    _, matrix_failed = await run(world, "context compact")

    assert agent_failed == (
        "⚠️ The context was not compacted because Echo failed: its server failed (HTTP 502). "
        "It is unchanged; send `!ai context compact` to try again."
    )
    assert matrix_failed.startswith("⚠️ The homeserver failed, so this did not finish")
    assert [t.content for t in await world.store.turns.of_room(ROOM)] == ["one", "re: one"]
    assert (ROOM, BINDING_TYPE) not in world.fake.account_data


async def test_share_turns_the_shared_memory_off_and_on(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    await world.store.memory.add(ALICE, "likes tea")

    _, off = await run(world, "context share off")
    await converse(world, "without memory")
    _, on = await run(world, "context share ON")
    await converse(world, "with memory")

    assert off == "Shared memory is off: this room's agent no longer sees your memory entries."
    assert on == "Shared memory is on: this room's agent sees your memory entries."
    assert [call.memory for call in backend.calls] == [(), ("likes tea",)]
    assert world.fake.account_data[(ROOM, BINDING_TYPE)]["share_memory"] is True


async def test_retry_answers_the_failed_message_as_a_reply_to_it(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    backend.fail = lambda n: BackendServerError(503) if n == 1 else None
    (question,) = await converse(world, "hello")

    command, text = await run(world, "retry")

    assert text == "", "the answer is the reply, to the message it answers"
    assert command.event_id not in world.fake.final_texts(ROOM)
    assert world.fake.final_texts(ROOM)[question.event_id] == "re: hello"
    assert backend.texts == ["hello", "hello"]


async def test_retry_while_an_answer_is_on_its_way(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    backend.gap = 0.2
    await world.say(ROOM, "slow one")

    command = await world.command(ROOM, "retry")

    assert world.fake.final_texts(ROOM)[command.event_id] == (
        "An answer is still on its way in this room: retry once it has arrived."
    )
    await world.settle()
    assert backend.texts == ["slow one"]
