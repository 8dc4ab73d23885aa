"""Encrypted working rooms without a server: the catch-up reads the timeline decrypted (the users'
messages and the bot's own replies), and messages whose key is late or never comes are answered
once, or told once."""

from __future__ import annotations

import attrs
import pytest
from mautrix.types import EncryptedEvent

from plugin.conversation.undecryptable import record
from plugin.db.rows import ANSWERED, AWAITING_KEY, NewTurn
from plugin.matrix import encryption
from plugin.matrix.binding import BINDING_TYPE, Binding
from plugin.startup.catchup import CatchUpReport
from plugin.startup.discover import MatrixView, RoomView
from plugin.startup.plan import compute
from plugin.startup.reconcile import ReconcileReport
from tests.fakes.matrix import ALICE, BOT_SESSION, FakeCrypto, Sent, encrypted_content, now_ms
from tests.fakes.world import ScriptedAgent, World, script_agent

ROOM = "!secret:example.org"
SESSION = "alice-session"
# Short, so that waiting for a key that never comes keeps the tests fast.
KEY_WAIT = 0.3


async def prepare(
    world: World, monkeypatch: pytest.MonkeyPatch, crypto: bool = True, **overrides: object
) -> ScriptedAgent:
    """An encrypted working room with a scripted agent; the user's session key is shared."""
    backend = script_agent(monkeypatch)
    world.configure({"rooms.key_wait": KEY_WAIT, **overrides})
    if crypto:
        world.enable_crypto().share(SESSION, age=3600)
    await world.add_room(ROOM)
    world.fake.encrypt_room(ROOM)
    return backend


async def catch_up(world: World) -> CatchUpReport:
    report = await world.parts.startup.catch_up.run()
    await world.settle()
    return report


def crypto_of(world: World) -> FakeCrypto:
    assert isinstance(world.fake.crypto, FakeCrypto)
    return world.fake.crypto


def sent_encrypted(world: World) -> list[Sent]:
    return [s for s in world.fake.sent if s.room_id == ROOM]


def told(world: World) -> list[Sent]:
    return [s for s in world.fake.messages(ROOM) if "decrypt" in s.content.get("body", "")]


def bot_reply(world: World, target: str, body: str, age: float, **extra: object) -> str:
    """An encrypted reply the bot sent before the restart, in its own session."""
    content = {
        "msgtype": "m.text",
        "body": body,
        "m.relates_to": {"m.in_reply_to": {"event_id": target}},
        **extra,
    }
    return bot_event(world, content, age)


def bot_event(world: World, content: dict, age: float) -> str:
    """An encrypted event the bot sent before the restart, in its own session."""
    encrypted = encrypted_content("m.room.message", content, BOT_SESSION, "BOTDEVICE")
    event = world.fake.add_event(ROOM, "m.room.encrypted", encrypted, world.fake.mxid, age=age)
    return event["event_id"]


async def test_messages_sent_while_down_are_decrypted_and_answered_once_in_order(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    first = world.fake.encrypted_message(ROOM, "one", age=120)
    second = world.fake.encrypted_message(ROOM, "two", age=60)

    report = await catch_up(world)

    assert (report.answered, report.undecryptable) == (2, 0)
    assert backend.texts == ["one", "two"]
    assert world.fake.final_texts(ROOM) == {first.event_id: "re: one", second.event_id: "re: two"}
    assert {s.type for s in sent_encrypted(world)} == {"m.room.encrypted"}, "answers encrypted"
    again = await catch_up(world)
    assert again.answered == 0 and len(backend.calls) == 2


async def test_a_message_queued_live_during_the_start_keeps_its_place(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first /syncs after a start can bring messages sent while the bot was down, decrypted
    after the plugin's handlers exist: the catch-up queues the older ones in front of them."""
    backend = await prepare(world, monkeypatch)
    world.parts.queues.hold_all()
    world.fake.encrypted_message(ROOM, "first", age=30)
    await world.say_encrypted(ROOM, "second", age=20)
    world.fake.encrypted_message(ROOM, "third", age=10)

    report = await catch_up(world)

    assert backend.texts == ["first", "second", "third"]
    assert report.answered == 2


async def test_the_bots_encrypted_replies_prove_answered(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bot reads its own encrypted replies back (its outbound session's inbound copy)."""
    backend = await prepare(world, monkeypatch)
    answered = world.fake.encrypted_message(ROOM, "answered before the crash", age=300)
    bot_reply(world, answered.event_id, "re: answered before the crash", 290)
    pending = world.fake.encrypted_message(ROOM, "still unanswered", age=100)

    report = await catch_up(world)

    assert (report.answered, report.closed) == (1, 1)
    assert backend.texts == ["still unanswered"]
    assert list(world.fake.final_texts(ROOM)) == [pending.event_id]
    row = await world.store.messages.get(answered.event_id)
    assert row is not None and row.state == ANSWERED


async def test_the_context_is_rebuilt_from_the_decrypted_timeline(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    question = world.fake.encrypted_message(ROOM, "one", age=400)
    streamed = bot_reply(world, question.event_id, "re: o", 390, **{"org.agentspaces.streaming": 1})
    bot_event(
        world,
        {
            "msgtype": "m.text",
            "body": "* re: one",
            "m.new_content": {"msgtype": "m.text", "body": "re: one"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": streamed},
        },
        380,
    )
    pending = world.fake.encrypted_message(ROOM, "two", age=100)

    report = await catch_up(world)

    assert (report.rebuilt, report.answered, report.unreadable) == (1, 1, 0)
    assert [(t.role, t.content) for t in backend.calls[0].history] == [
        ("user", "one"),
        ("assistant", "re: one"),
    ]
    assert list(world.fake.final_texts(ROOM)) == [pending.event_id]


async def test_a_walk_decrypts_only_what_the_catch_up_reads(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await prepare(world, monkeypatch)
    question = world.fake.encrypted_message(ROOM, "one", age=400)
    for rel_type, body in (("m.replace", "* one!"), ("m.annotation", "👍")):
        relation = {"rel_type": rel_type, "event_id": question.event_id}
        world.fake.encrypted_message(ROOM, body, relates_to=relation, age=395)
    reply = bot_reply(world, question.event_id, "re", 390, **{"org.agentspaces.streaming": 1})
    edits = [
        bot_event(
            world,
            {
                "msgtype": "m.text",
                "body": f"* re: {'o' * n}",
                "m.new_content": {"msgtype": "m.text", "body": f"re: {'o' * n}"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": reply},
            },
            390 - n,
        )
        for n in range(1, 6)
    ]
    decrypter = world.parts.startup.catch_up.encryption
    walked = world.fake.history[ROOM][::-1]

    events = await decrypter.decrypt_timeline(ROOM, walked)

    # The user's edit and reaction, and the bot's older edits, are dropped undecrypted.
    assert crypto_of(world).decrypted == [edits[-1], reply, question.event_id]
    assert [e["event_id"] for e in events if e["type"] == "m.room.encrypted"] == []
    assert [e["event_id"] for e in events if e["sender"] == ALICE] == [question.event_id]


async def test_an_interrupted_encrypted_reply_is_taken_over(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    question = world.fake.encrypted_message(ROOM, "hello", age=100)
    cut = bot_reply(world, question.event_id, "re: he", 90, **{"org.agentspaces.streaming": 1})
    await world.store.turns.add_answered(ROOM, [NewTurn("$earlier", "user", "earlier")])

    report = await catch_up(world)

    assert (report.answered, report.resumed) == (1, 1)
    assert backend.texts == ["hello"]
    edit = world.fake.messages(ROOM)[-1]
    assert edit.content["m.relates_to"] == {"rel_type": "m.replace", "event_id": cut}
    assert edit.content["m.new_content"]["body"] == "re: hello"


async def test_a_message_whose_key_never_comes_is_told_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    lost = world.fake.encrypted_message(ROOM, "nobody reads this", session_id="lost", age=60)
    fine = world.fake.encrypted_message(ROOM, "but this", age=30)

    report = await catch_up(world)

    assert (report.answered, report.undecryptable) == (1, 1)
    assert backend.texts == ["but this"]
    # The key was asked for, from the device that sent the message.
    assert crypto_of(world).requests == [(ROOM, "lost", {ALICE: ["PHONE"]})]
    (notice,) = told(world)
    assert notice.content["m.relates_to"] == {"m.in_reply_to": {"event_id": lost.event_id}}
    assert notice.content["org.agentspaces.covers"] == [lost.event_id]
    assert "I could not decrypt this message" in notice.content["body"]
    assert world.metrics.undecryptable_messages == 1
    row = await world.store.messages.get(lost.event_id)
    assert row is not None and row.state == ANSWERED
    assert fine.event_id in world.fake.final_texts(ROOM)

    # Told is told, even after the database is lost: the notice in the timeline names it.
    await world.store.messages.prune(now_ms() + 1)
    await world.store.turns.clear(ROOM)
    again = await catch_up(world)
    assert (again.rebuilt, again.undecryptable, again.answered) == (1, 0, 0)
    assert len(told(world)) == 1 and world.metrics.undecryptable_messages == 1


async def test_a_key_that_comes_late_gets_the_message_answered_by_the_catch_up(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch, **{"rooms.key_wait": 5})
    crypto_of(world).answer_requests_in = 0.1
    late = world.fake.encrypted_message(ROOM, "late key", session_id="late", age=30)

    report = await catch_up(world)

    assert (report.answered, report.undecryptable) == (1, 0)
    assert backend.texts == ["late key"]
    assert list(world.fake.final_texts(ROOM)) == [late.event_id]
    assert told(world) == []


async def test_live_a_message_whose_key_never_comes_is_told_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)

    lost = await world.say_encrypted(ROOM, "never readable", session_id="lost")
    await world.settle()
    await world.parts.undecryptable.on_encrypted(lost)

    assert backend.texts == []
    (notice,) = told(world)
    assert notice.content["m.relates_to"] == {"m.in_reply_to": {"event_id": lost.event_id}}
    assert crypto_of(world).requests == [(ROOM, "lost", {ALICE: ["PHONE"]})]
    assert world.metrics.undecryptable_messages == 1
    row = await world.store.messages.get(lost.event_id)
    assert row is not None and row.state == ANSWERED
    # A start after it does not tell it again: the catch-up sees the notice and the record.
    await catch_up(world)
    assert len(told(world)) == 1


async def test_live_an_undecryptable_reaction_or_edit_is_no_message(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await prepare(world, monkeypatch)
    for rel_type in ("m.annotation", "m.replace"):
        relation = {"rel_type": rel_type, "event_id": "$question"}
        await world.say_encrypted(ROOM, "👍", session_id="lost", relates_to=relation)

    assert crypto_of(world).requests == [] and told(world) == []
    assert world.metrics.undecryptable_messages == 0


async def test_live_a_late_key_gets_the_message_answered_exactly_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch, **{"rooms.key_wait": 5})
    crypto_of(world).answer_requests_in = 0.1

    late = await world.say_encrypted(ROOM, "my key is late", session_id="late")
    await world.settle()
    # The key is new now: maubot and the plugin both hand the message on, and one answer goes.
    await world.parts.undecryptable.on_encrypted(late)
    await world.settle()

    assert backend.texts == ["my key is late"]
    assert list(world.fake.final_texts(ROOM)) == [late.event_id]
    assert [e.event_id for e in world.fake.dispatched] == [late.event_id]
    assert told(world) == []
    row = await world.store.messages.get(late.event_id)
    assert row is not None and row.state == ANSWERED and "late" in row.content


async def test_live_a_key_that_raced_its_message_still_gets_it_answered(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """maubot tried to decrypt before the key landed, and dropped the message: the plugin's own
    handler finds the key new and hands the message to the intake."""
    backend = await prepare(world, monkeypatch)
    evt = world.fake.encrypted_message(ROOM, "raced", session_id="raced")
    crypto_of(world).share("raced")

    await world.parts.undecryptable.on_encrypted(evt)
    await world.settle()

    assert backend.texts == ["raced"]
    assert told(world) == []


async def test_live_a_message_with_an_old_key_is_left_to_maubots_decryption(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)

    evt = await world.say_encrypted(ROOM, "the usual case")
    await world.settle()

    assert backend.texts == ["the usual case"]
    assert crypto_of(world).decrypted == [evt.event_id], "decrypted once, by maubot"
    assert crypto_of(world).requests == []


async def test_a_crash_while_awaiting_a_key_leaves_it_to_the_next_start(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    evt = world.fake.encrypted_message(ROOM, "awaited", session_id="slow", age=20)
    # What the live handler recorded before it waited; the cursor moved past it since.
    await record(world.store, evt, AWAITING_KEY)
    await world.store.turns.add_answered(ROOM, [NewTurn("$earlier", "user", "earlier")])
    later = world.fake.message(ROOM, "a notice", world.fake.mxid, msgtype="m.notice", age=10)
    await world.store.rooms.set_cursor(ROOM, later.event_id, later.timestamp)
    crypto_of(world).share("slow")

    report = await catch_up(world)

    assert report.answered == 1
    assert backend.texts == ["awaited"]
    row = await world.store.messages.get(evt.event_id)
    assert row is not None and row.state == ANSWERED and "awaited" in row.content


async def test_without_crypto_an_encrypted_working_room_is_told_at_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch, crypto=False)
    evt = EncryptedEvent.deserialize(
        {
            "type": "m.room.encrypted",
            "room_id": ROOM,
            "event_id": "$unreadable",
            "sender": ALICE,
            "origin_server_ts": 1,
            "content": encrypted_content("m.room.message", {"body": "x"}, SESSION),
        }
    )

    await world.parts.undecryptable.on_encrypted(evt)

    assert backend.texts == []
    (notice,) = world.fake.messages(ROOM)
    assert notice.content["m.relates_to"] == {"m.in_reply_to": {"event_id": evt.event_id}}
    assert "this bot has no encryption support" in notice.content["body"]
    assert [s.type for s in world.fake.sent] == ["m.room.message"], "sent in the clear"
    assert world.metrics.undecryptable_messages == 1


async def test_lost_keys_neither_answer_twice_nor_hide_what_the_context_lacks(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """maubot's crypto store was lost with the plugin's database: neither the user's messages
    nor the bot's replies decrypt any more."""
    backend = await prepare(world, monkeypatch)
    old = world.fake.encrypted_message(ROOM, "answered long ago", session_id="gone", age=300)
    bot_reply(world, old.event_id, "re: answered long ago", 290)
    crypto_of(world).sessions.clear()
    crypto_of(world).share(SESSION)
    fresh = world.fake.encrypted_message(ROOM, "after the loss", age=10)

    report = await catch_up(world)

    assert backend.texts == ["after the loss"], "the old message is not answered again"
    assert [(t.role, t.content) for t in backend.calls[0].history] == []
    assert (report.rebuilt, report.unreadable, report.undecryptable) == (1, 2, 0)
    assert "2 encrypted events could not be decrypted" in report.summary()
    assert "not in maubot's crypto store" in report.summary()
    assert told(world) == []
    assert list(world.fake.final_texts(ROOM)) == [fresh.event_id]


async def test_waiting_for_keys_is_bounded(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    await prepare(world, monkeypatch)
    monkeypatch.setattr(encryption, "MAX_WAITING", 0)
    evt = world.fake.encrypted_message(ROOM, "x", session_id="never")
    decrypter = world.parts.startup.catch_up.encryption

    assert await decrypter.wait_for_key(evt, 60) is False
    assert crypto_of(world).requests == []


def test_the_reconciliation_counts_encrypted_rooms_and_says_when_it_cannot_read_them() -> None:
    binding = Binding(ALICE, None, "echo", "chat").to_content()
    encryption_state = {"type": "m.room.encryption", "state_key": "", "content": {}}
    view = MatrixView(
        rooms={
            room_id: RoomView(
                room_id,
                joined=True,
                state={("m.room.encryption", ""): encryption_state} if encrypted else {},
                account_data={BINDING_TYPE: binding},
            )
            for room_id, encrypted in ((ROOM, True), ("!plain:example.org", False))
        }
    )

    plan = compute(view, {}, {}, "@bot:example.org")

    assert (plan.managed_rooms, plan.encrypted) == (2, 1)
    readable = ReconcileReport(rooms=2, encrypted=1, finished=True)
    assert "encrypted=1 duration=" in readable.summary()
    unreadable = attrs.evolve(readable, crypto=False)
    assert "encrypted=1 (unreadable: this maubot client has no encryption support)" in (
        unreadable.summary()
    )
    assert "crypto" not in readable.counts() and readable.counts()["encrypted"] == 1
