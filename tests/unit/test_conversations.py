"""Threads, shared rooms, forks, the agent's identity and usage, in-process (fake Matrix, real
store on SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest

from plugin.conversation.group import calls_agent
from plugin.conversation.threads import MAX_THREAD_STARTS, thread_chat_id, with_start
from plugin.db.rows import RoomRow
from plugin.matrix.binding import BINDING_TYPE, Binding
from plugin.matrix.replies import resolve
from plugin.startup.rebuild import conversation_turns, room_messages
from tests.fakes.matrix import ALICE, FakeRoom
from tests.fakes.world import ScriptedAgent, World, room_row, script_agent, scripted_room

ROOM = "!room:example.org"
BOB = "@bob:example.org"
CONFIG = {"dispatch.edit_interval": 0.0}


async def prepare(world: World, monkeypatch: pytest.MonkeyPatch) -> tuple[ScriptedAgent, RoomRow]:
    return await scripted_room(world, monkeypatch, ROOM, CONFIG)


def answer_ids(world: World) -> dict[str, str]:
    """The user event -> the bot's reply to it (its first event)."""
    ids: dict[str, str] = {}
    for sent in world.fake.messages(ROOM):
        reply_to = (sent.content.get("m.relates_to") or {}).get("m.in_reply_to") or {}
        if "event_id" in reply_to:
            ids.setdefault(reply_to["event_id"], sent.event_id)
    return ids


def thread(root: str) -> dict[str, Any]:
    return {
        "rel_type": "m.thread",
        "event_id": root,
        "is_falling_back": True,
        "m.in_reply_to": {"event_id": root},
    }


def test_a_binding_keeps_the_new_fields_and_ignores_malformed_ones() -> None:
    binding = Binding(
        ALICE,
        "!s:example.org",
        "echo",
        "chat",
        collaborators=(BOB,),
        fork_room="!from:example.org",
        fork_event="$at",
        thread_starts={"$root": "$clear"},
    )
    assert Binding.from_content(binding.to_content()) == binding
    odd = {**binding.to_content(), "collaborators": [5, "bob"], "thread_starts": [1]}
    parsed = Binding.from_content(odd)
    assert parsed is not None and parsed.collaborators == () and parsed.thread_starts == {}


def test_a_thread_chat_id_is_derived_and_starts_are_bounded() -> None:
    assert thread_chat_id("chat", "$r", None) == thread_chat_id("chat", "$r", None)
    ids = {thread_chat_id("chat", "$r", None), thread_chat_id("chat", "$s", None)}
    ids |= {thread_chat_id("other", "$r", None), thread_chat_id("chat", "$r", "$clear")}
    assert len(ids) == 4
    starts: dict[str, str] = {}
    for n in range(MAX_THREAD_STARTS + 5):
        starts = with_start(starts, f"$r{n}", "$c")
    assert len(starts) == MAX_THREAD_STARTS and "$r0" not in starts


async def test_binding_fields_survive_the_database(world: World) -> None:
    room = await world.add_room(ROOM)
    changed = await world.parts.context.bindings.change(
        room, collaborators=(BOB,), thread_starts={"$r": "$c"}, fork_room="!f:x", fork_event="$e"
    )
    world.store.caches.rooms.clear()
    stored = await world.room(ROOM)
    assert stored.binding == changed.binding
    assert world.fake.account_data[(ROOM, BINDING_TYPE)]["collaborators"] == [BOB]


async def test_threads_are_conversations_of_their_own(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, room = await prepare(world, monkeypatch)
    root = await world.say(ROOM, "the root")
    await world.settle()
    first = await world.say(ROOM, "in the thread", relates_to=thread(root.event_id))
    await world.settle()
    await world.say(ROOM, "again in it", relates_to=thread(root.event_id))
    await world.say(ROOM, "main again")
    await world.settle()

    # The thread and the main timeline are answered in parallel: found by their text.
    in_thread, again, main = (
        next(c for c in backend.calls if c.text == text)
        for text in ("in the thread", "again in it", "main again")
    )
    assert in_thread.chat_id == thread_chat_id(room.chat_id or "", root.event_id, None)
    assert [t.content for t in in_thread.history] == ["the root"]
    assert [t.content for t in again.history] == ["the root", "in the thread", "re: in the thread"]
    assert main.chat_id == room.chat_id
    assert [t.content for t in main.history] == ["the root", "re: the root"]
    replies = [s.content for s in world.fake.messages(ROOM)]
    answer = next(
        c for c in replies if c["m.relates_to"]["m.in_reply_to"]["event_id"] == first.event_id
    )
    assert answer["m.relates_to"]["rel_type"] == "m.thread"
    # The context commands work per thread.
    await world.command(ROOM, "context clear", sender=ALICE)
    await world.settle()


async def test_context_clear_in_a_thread_starts_that_thread_anew(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, room = await prepare(world, monkeypatch)
    root = await world.say(ROOM, "root")
    await world.say(ROOM, "t1", relates_to=thread(root.event_id))
    await world.settle()
    clear = world.fake.message(ROOM, "!ai context clear", relates_to=thread(root.event_id))
    await world.parts.router.handle(clear, "context clear")
    await world.say(ROOM, "t2", relates_to=thread(root.event_id))
    await world.say(ROOM, "main")
    await world.settle()

    stored = await world.room(ROOM)
    assert stored.thread_starts == {root.event_id: clear.event_id}
    t2, main = (next(c for c in backend.calls if c.text == text) for text in ("t2", "main"))
    assert t2.history == () and t2.chat_id == thread_chat_id(
        room.chat_id or "", root.event_id, clear.event_id
    )
    assert [t.content for t in main.history] == ["root", "re: root"], "the room keeps its own"


async def test_threads_off_keep_one_conversation(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = script_agent(monkeypatch)
    world.configure({**CONFIG, "rooms.threads": "off"})
    room = await world.add_room(ROOM)
    root = await world.say(ROOM, "root")
    await world.say(ROOM, "in a thread", relates_to=thread(root.event_id))
    await world.settle()
    assert backend.calls[-1].chat_id == room.chat_id
    assert [t.content for t in backend.calls[-1].history] == ["root", "re: root"]


def test_the_agent_is_called_by_mentions_names_or_all(world: World) -> None:
    room = room_row(ROOM)
    shared = room_row(ROOM)
    shared.collaborators = (BOB,)
    fake, bot = world.fake, world.fake.mxid
    plain = fake.message(ROOM, "hello there", BOB)
    mention = fake.message(ROOM, "hi", BOB, extra={"m.mentions": {"user_ids": [bot]}})
    named = fake.message(ROOM, "echo, what do you think?", BOB)
    settings = world.settings
    assert calls_agent(plain, room, settings, bot), "a room of one person: every message"
    assert not calls_agent(plain, shared, settings, bot)
    assert calls_agent(mention, shared, settings, bot)
    assert calls_agent(named, shared, settings, bot)
    world.configure({"rooms.group_trigger": "all"})
    assert calls_agent(plain, shared, world.settings, bot)


async def test_a_shared_room_knows_who_said_what_and_keeps_memories_apart(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, _ = await prepare(world, monkeypatch)
    await world.store.memory.add(ALICE, "alice's secret")
    await world.store.memory.add(BOB, "bob's secret")
    reply = await world.command(ROOM, f"invite {BOB}")
    assert world.fake.rooms[ROOM].members[BOB] == "invite", reply
    assert (await world.room(ROOM)).collaborators == (BOB,)
    bot = world.fake.mxid

    await world.say(ROOM, "just saying", sender=BOB)
    await world.say(ROOM, "question", sender=BOB, extra={"m.mentions": {"user_ids": [bot]}})
    await world.say(ROOM, "echo, mine", sender=ALICE)
    await world.say(ROOM, "stranger", sender="@eve:example.org")
    await world.settle()

    bobs, alices = backend.calls
    assert [(t.content, t.sender) for t in bobs.history] == [("just saying", BOB)]
    assert bobs.shared and bobs.memory == () and "secret" not in bobs.system_prompt
    assert alices.memory == ("alice's secret",)
    assert not any("bob's secret" in str(call) for call in backend.calls)
    answers = [t for t in world.fake.final_texts(ROOM).values() if t.startswith("re: ")]
    assert answers == ["re: question", "re: echo, mine"], "only the calls were answered"

    await world.command(ROOM, f"remove {BOB}")
    assert (await world.room(ROOM)).collaborators == ()
    assert world.fake.rooms[ROOM].members[BOB] == "leave"


async def test_only_allowed_users_can_be_collaborators(world: World) -> None:
    world.configure({"access.allowed": ["@alice:example.org"]})
    await world.add_room(ROOM)
    await world.command(ROOM, f"invite {BOB}")
    await world.command(ROOM, "invite bob")
    bodies = world.fake.bodies(ROOM)
    assert "may not use this bot" in bodies[0] and "Matrix ID" in bodies[1]
    assert (await world.room(ROOM)).collaborators == ()


async def test_fork_copies_the_turns_up_to_the_message(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    script_agent(monkeypatch)
    world.configure(CONFIG)
    world.fake.rooms["!space:example.org"] = FakeRoom(members={world.fake.mxid: "join"})
    await world.store.users.upsert(ALICE, "!space:example.org")
    await world.add_room(ROOM)
    asked = [await world.say(ROOM, f"q{n}") for n in range(3)]
    await world.settle()
    answers = {
        s.content["m.relates_to"]["m.in_reply_to"]["event_id"]: s.event_id
        for s in world.fake.messages(ROOM)
    }
    fork = world.fake.message(
        ROOM, "!ai fork", relates_to={"m.in_reply_to": {"event_id": answers[asked[1].event_id]}}
    )
    await world.parts.router.handle(fork, "fork")

    (new,) = [r for r in await world.store.rooms.of_owner(ALICE) if r.room_id != ROOM]
    assert (new.fork_room, new.fork_event) == (ROOM, answers[asked[1].event_id])
    turns = [t.content for t in await world.store.turns.of_room(new.room_id)]
    assert turns == ["q0", "re: q0", "q1", "re: q1"]
    assert new.chat_id != (await world.room(ROOM)).chat_id


async def test_new_rooms_and_use_show_the_agent_as_the_bot(world: World) -> None:
    agents = [
        {"id": "echo", "name": "Echo", "backend": "echo"},
        {"id": "polly", "name": "Polly", "backend": "echo", "avatar": "mxc://x/polly"},
    ]
    world.configure({"agents": agents})
    await world.parts.onboarding.onboard(ALICE)
    (room,) = await world.store.rooms.of_owner(ALICE)
    member = world.fake.rooms[room.room_id].state[("m.room.member", world.fake.mxid)]
    assert member == {"membership": "join", "displayname": "Echo"}
    await world.command(room.room_id, "use polly")
    member = world.fake.rooms[room.room_id].state[("m.room.member", world.fake.mxid)]
    assert member["displayname"] == "Polly" and member["avatar_url"] == "mxc://x/polly"


async def test_usage_lists_messages_and_tokens_per_agent(world: World) -> None:
    from plugin.conversation.quota import today

    await world.add_room(ROOM)
    await world.store.agent_usage.add(ALICE, "echo", today(), 2, 300)
    await world.store.agent_usage.add(ALICE, "echo", today()[:8] + "01", 1, 5)
    await world.store.agent_usage.add(BOB, "echo", today(), 9, 999)
    await world.command(ROOM, "usage")
    (body,) = world.fake.bodies(ROOM)
    if today().endswith("-01"):
        assert "today 3 messages, 305 tokens" in body
    else:
        assert "**Echo**: today 2 messages, 300 tokens; this month 3 messages, 305 tokens" in body


def test_a_rebuild_sorts_messages_into_their_threads(world: World) -> None:
    room = room_row(ROOM)
    fake = world.fake
    root = fake.message(ROOM, "root")
    fake.message(ROOM, "in thread", relates_to=thread(root.event_id))
    events = list(reversed(fake.history[ROOM]))
    messages, notes = room_messages(events, room, world.settings, fake.mxid)
    timeline = resolve(events, fake.mxid)
    # Nothing is answered yet: nothing to rebuild.
    assert conversation_turns(room, events, timeline, messages, notes, world.settings) == {}
