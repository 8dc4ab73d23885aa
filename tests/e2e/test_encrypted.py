"""Encrypted rooms, end to end: a maubot with crypto talks megolm with a user's device through
onboarding, streaming, downtime, a deleted database, a SIGKILL and restarts, and tells the user
about a message it can never decrypt; a maubot without crypto tells an encrypted room that it
cannot read it, and refuses `rooms.encrypt: always`."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import pytest
from attrs import define
from ruamel.yaml import YAML

from tests.fakes.servers import Behavior, FakeOpenAI
from tests.harness.crypto_user import ENCRYPTED, CryptoMatrixUser
from tests.harness.deploy import Deployment
from tests.harness.flows import (
    answered_once_in_order,
    answers,
    bot_account_data,
    delete_plugin_database,
    join_space,
    room_links,
    wipe_and_restart,
)
from tests.harness.matrix_user import STREAMING_KEY, MatrixUser, Reply
from tests.harness.maubot_server import CRYPTO_ENABLED, CRYPTO_MISSING

# The current plugin may greet a direct chat twice (the invite is handled again when the bot's
# own invite event shows up in the joined room's timeline), so the onboarding greeting is found
# by its text rather than by being the only message.
READY = "Your Space is ready"
TOLD = "I could not decrypt"
_TURNS = re.compile(r"context: (\d+) turns?")


@define
class DirectOnboarding:
    dm: str
    greeting: dict
    space_id: str
    rooms: dict[str, str]  # agent_id -> working room


def bot_messages(user: MatrixUser, room_id: str, bot: Deployment) -> list[dict]:
    return user.events(room_id, "m.room.message", bot.bot_id)


async def onboard_by_direct_chat(user: CryptoMatrixUser, bot: Deployment) -> DirectOnboarding:
    """Invites the bot to an encrypted direct chat, as Element does, and joins what it makes."""
    dm = await user.create_room(invite=[bot.bot_id], is_direct=True, encrypted=True)
    await user.wait_for_membership(dm, bot.bot_id, "join")
    greeting = await user.wait_for(
        lambda: next(
            (ev for ev in bot_messages(user, dm, bot) if READY in ev["content"]["body"]), None
        ),
        timeout=30,
        what="the onboarding greeting",
    )
    space_id = room_links(greeting["content"]["formatted_body"])[0]
    return DirectOnboarding(dm, greeting, space_id, await join_space(user, bot, space_id))


async def encrypted_room(
    user: CryptoMatrixUser, bot: Deployment, config: dict[str, Any] | None = None
) -> DirectOnboarding:
    """The bot on `config`, and the user onboarded from an encrypted direct chat."""
    await bot.update_config(config)
    onboarded = await onboard_by_direct_chat(user, bot)
    for room_id in onboarded.rooms.values():
        assert await user.is_encrypted(room_id), "rooms.encrypt: auto, and maubot has crypto"
    return onboarded


async def assert_stored_encrypted(user: CryptoMatrixUser, room_id: str, event_id: str) -> None:
    """The homeserver holds only ciphertext: what the user read was decrypted on its device."""
    assert user.raw_types[event_id] == ENCRYPTED
    stored = await user.get_event(room_id, event_id)
    assert stored["type"] == ENCRYPTED
    assert "body" not in stored["content"] and stored["content"]["ciphertext"]


async def assert_answered_once_in_order(
    user: CryptoMatrixUser, room_id: str, sent: list[tuple[str, str]], bot: Deployment
) -> None:
    """Each answered once and in order, starting with its expected text, and encrypted."""
    replies = await answered_once_in_order(user, room_id, [event_id for event_id, _ in sent], bot)
    for reply, (_, expected) in zip(replies, sent, strict=True):
        assert reply.body.startswith(expected), reply.body
        await assert_stored_encrypted(user, room_id, reply.event_id)
    assert not user.undecrypted and not user.crypto_errors


def turns_of(reply: Reply) -> int:
    found = _TURNS.search(reply.body)
    assert found, reply.body
    return int(found.group(1))


async def web_page(bot: Deployment, page: str) -> str:
    token = YAML(typ="safe").load((await bot.instance())["config"])["web"]["token"]
    url = f"{bot.server.url}/_matrix/maubot/plugin/{bot.instance_id}/{page}"
    async with aiohttp.ClientSession() as http, http.get(url, params={"token": token}) as resp:
        assert resp.status == 200
        return await resp.text()


async def test_an_encrypted_direct_chat_onboards_into_encrypted_rooms_that_answer(
    crypto_bot: Deployment, make_crypto_user
) -> None:
    alice = await make_crypto_user("alice")

    onboarded = await onboard_by_direct_chat(alice, crypto_bot)

    greeting = onboarded.greeting
    await assert_stored_encrypted(alice, onboarded.dm, greeting["event_id"])
    assert greeting["content"]["msgtype"] == "m.notice"
    assert "can't read encrypted messages" not in greeting["content"]["body"]
    # The Space first, then its rooms: the greeting is the same as `!ai start` in a plain room.
    links = room_links(greeting["content"]["formatted_body"])
    assert links == [onboarded.space_id, *onboarded.rooms.values()], greeting["content"]["body"]
    # rooms.encrypt is auto and this maubot has crypto: the rooms it made are encrypted.
    assert list(onboarded.rooms) == ["echo"]
    room = onboarded.rooms["echo"]
    encryption = await alice.get_state(room, "m.room.encryption")
    assert encryption["algorithm"] == "m.megolm.v1.aes-sha2"
    # The working room answers, and commands, memory and the context commands work there too.
    reply = await alice.ask(room, "hello in secret", crypto_bot.bot_id, timeout=30)
    assert reply.body.startswith("hello in secret\n\n(context: 1 turn"), reply.body
    await assert_stored_encrypted(alice, room, reply.event_id)
    remembered = await alice.ask(room, "!ai remember I like tea", crypto_bot.bot_id)
    assert "I like tea" in (await alice.ask(room, "!ai memory", crypto_bot.bot_id)).body
    context = await alice.ask(room, "!ai context", crypto_bot.bot_id)
    assert "- Turns: 2" in context.body, context.body
    await assert_stored_encrypted(alice, room, remembered.event_id)
    assert not alice.undecrypted and not alice.crypto_errors
    log = crypto_bot.server.log_text()
    assert CRYPTO_ENABLED in log and CRYPTO_MISSING not in log


async def test_a_streamed_reply_ends_with_the_complete_decrypted_text(
    crypto_bot: Deployment, make_crypto_user, openai_server: FakeOpenAI
) -> None:
    bob = await make_crypto_user("bob")
    agent = openai_server.agent()
    config = {"agents": [agent], "default_agent": agent["id"], "dispatch.edit_interval": 0.2}
    room = (await encrypted_room(bob, crypto_bot, config)).rooms[agent["id"]]
    text = " ".join(f"word{n}" for n in range(400))
    openai_server.script(Behavior(reply=text, chunks=40, chunk_delay=0.05))

    event_id = await bob.send_text(room, "stream me a long secret answer")
    (reply,) = await answers(bob, room, event_id, crypto_bot)

    assert reply.body == text, "the final edit, decrypted, holds the whole answer"
    assert reply.edits >= 2, "it streamed as edits"
    assert not reply.content.get(STREAMING_KEY)
    await assert_stored_encrypted(bob, room, event_id)
    bot_events = bob.events(room, sender=crypto_bot.bot_id)
    sent = [ev for ev in bot_events if ev["event_id"] in bob.encrypted]
    assert len(sent) >= reply.edits + 1, "the reply and each of its edits were encrypted"
    for ev in sent:
        await assert_stored_encrypted(bob, room, ev["event_id"])
    assert not bob.undecrypted and not bob.crypto_errors


async def test_messages_sent_while_down_are_answered_once_in_order(
    crypto_bot: Deployment, make_crypto_user
) -> None:
    carol = await make_crypto_user("carol")
    room = (await encrypted_room(carol, crypto_bot)).rooms["echo"]
    await carol.ask(room, "before", crypto_bot.bot_id, timeout=30)

    await crypto_bot.stop()
    sent = [await carol.send_text(room, f"offline {n}") for n in range(2)]
    # A new session while the bot is down: maubot drops its first /sync after a start, the
    # room key with it, so the bot must ask carol's device for the key.
    await carol.new_session(room)
    sent += [await carol.send_text(room, f"offline {n}") for n in range(2, 4)]
    await crypto_bot.start()

    for event_id in sent:
        await assert_stored_encrypted(carol, room, event_id)
    await assert_answered_once_in_order(
        carol,
        room,
        [(ev, f"offline {n}\n\n(context: {2 * n + 3} turns, ~") for n, ev in enumerate(sent)],
        crypto_bot,
    )
    await crypto_bot.restart()
    await carol.ask(room, "later", crypto_bot.bot_id, timeout=30)
    for event_id in sent:
        assert len(carol.replies_to(room, event_id, crypto_bot.bot_id)) == 1, "answered once"


async def test_a_wiped_database_rebuilds_the_context_from_the_encrypted_timeline(
    crypto_bot: Deployment, make_crypto_user, db_kind: str, request: pytest.FixtureRequest
) -> None:
    dave = await make_crypto_user("dave")
    onboarded = await encrypted_room(dave, crypto_bot, {"access.admins": [dave.user_id]})
    room = onboarded.rooms["echo"]
    await dave.ask(room, "one", crypto_bot.bot_id, timeout=30)
    await dave.ask(room, "two", crypto_bot.bot_id)
    binding = await bot_account_data(crypto_bot, room, "org.agentspaces.room")
    as_bot = MatrixUser(crypto_bot.synapse.url, crypto_bot.bot_id, crypto_bot.bot_token)

    await crypto_bot.stop()
    await delete_plugin_database(crypto_bot, db_kind, request)
    try:
        # Drift besides: the Space lost its link to the room.
        await as_bot.send_state(onboarded.space_id, "m.space.child", {}, state_key=room)
    finally:
        await as_bot.http.close()
    await crypto_bot.start()

    reply = await dave.ask(room, "three", crypto_bot.bot_id, timeout=30)
    # Two exchanges rebuilt from the encrypted timeline, plus this message.
    assert turns_of(reply) == 5, reply.body
    child = await dave.get_state(onboarded.space_id, "m.space.child", room)
    assert child["via"], "the Space link was repaired"
    assert await bot_account_data(crypto_bot, room, "org.agentspaces.room") == binding
    status = (await dave.ask(onboarded.dm, "!ai admin status", crypto_bot.bot_id)).body
    assert "repaired=1" in status and "encrypted=1" in status, status
    assert "rebuilt=1" in status and "unreadable=0" in status, status


def user_texts(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


async def test_threads_and_regenerate_read_the_encrypted_timeline(
    crypto_bot: Deployment,
    make_crypto_user,
    openai_server: FakeOpenAI,
    db_kind: str,
    request: pytest.FixtureRequest,
) -> None:
    carol = await make_crypto_user("carol")
    agent = openai_server.agent(stream=False)
    config = {"agents": [agent], "default_agent": agent["id"]}
    room = (await encrypted_room(carol, crypto_bot, config)).rooms[agent["id"]]
    first = await carol.send_text(room, "first topic")
    answer = await carol.wait_for_reply(room, first, crypto_bot.bot_id, timeout=30)

    # A thread opens with its root, read back from Matrix and decrypted.
    apples = await carol.send_text(room, "apples?", thread_root=first)
    await carol.wait_for_reply(room, apples, crypto_bot.bot_id, timeout=30)
    assert user_texts(openai_server.requests[-1].body) == ["first topic", "apples?"]

    # 🔁 finds the answer's parts in the encrypted timeline and edits the answer in place.
    openai_server.script(Behavior(reply="a better answer"))
    await carol.react(room, answer.event_id, "🔁")

    def regenerated() -> bool:
        replies = carol.replies_to(room, first, crypto_bot.bot_id)
        return bool(replies) and replies[0].final and replies[0].body == "a better answer"

    await carol.wait_for(regenerated, 30, "the answer to be regenerated")
    (reply,) = carol.replies_to(room, first, crypto_bot.bot_id)
    assert reply.event_id == answer.event_id, "the same message, edited"
    assert user_texts(openai_server.requests[-1].body) == ["first topic"]

    # A wiped database: the thread's context comes back from the encrypted timeline.
    await wipe_and_restart(crypto_bot, db_kind, request)
    pears = await carol.send_text(room, "and pears?", thread_root=first)
    await carol.wait_for_reply(room, pears, crypto_bot.bot_id, timeout=30)
    assert user_texts(openai_server.requests[-1].body) == ["first topic", "apples?", "and pears?"]
    assert not carol.undecrypted and not carol.crypto_errors


@pytest.mark.parametrize("fault", ["sigkill", "stop"])
async def test_a_sigkill_or_stop_mid_reply_answers_everything_once_in_order(
    crypto_bot: Deployment, make_crypto_user, openai_server: FakeOpenAI, fault: str
) -> None:
    erin = await make_crypto_user("erin")
    agent = openai_server.agent()
    config = {"agents": [agent], "default_agent": agent["id"]}
    room = (await encrypted_room(erin, crypto_bot, config)).rooms[agent["id"]]
    # The first answer streams slowly; the two messages behind it wait in the room's queue.
    openai_server.script(Behavior(chunks=30, chunk_delay=0.3))
    texts = ["first, streamed", "second, queued", "third, queued"]
    sent = [(await erin.send_text(room, text), text) for text in texts]

    def streaming() -> bool:
        replies = erin.replies_to(room, sent[0][0], crypto_bot.bot_id)
        return bool(replies) and not replies[0].final

    await erin.wait_for(streaming, 30, "the first answer to be streaming")
    await (crypto_bot.kill() if fault == "sigkill" else crypto_bot.stop())
    await crypto_bot.start()

    await assert_answered_once_in_order(
        erin, room, [(ev, f"reply to: {text}") for ev, text in sent], crypto_bot
    )


async def test_a_restart_keeps_decrypting(crypto_bot: Deployment, make_crypto_user) -> None:
    frank = await make_crypto_user("frank")
    room = (await encrypted_room(frank, crypto_bot)).rooms["echo"]
    await frank.ask(room, "before the restart", crypto_bot.bot_id, timeout=30)

    await crypto_bot.restart()

    # The same megolm session both ways (kept in maubot's crypto store), then a new one.
    same = await frank.ask(room, "same session", crypto_bot.bot_id, timeout=30)
    await frank.new_session(room)
    new = await frank.ask(room, "new session", crypto_bot.bot_id, timeout=30)
    assert same.body.startswith("same session") and new.body.startswith("new session")
    for reply in (same, new):
        await assert_stored_encrypted(frank, room, reply.event_id)
    assert not frank.undecrypted and not frank.crypto_errors


async def test_a_message_that_cannot_be_decrypted_is_told_once_and_counted(
    crypto_bot: Deployment, make_crypto_user
) -> None:
    grace = await make_crypto_user("grace")
    room = (await encrypted_room(grace, crypto_bot, {"rooms.key_wait": 3})).rooms["echo"]
    await grace.ask(room, "readable", crypto_bot.bot_id, timeout=30)

    lost = await grace.send_undecryptable(room, "nobody can read this")
    notice = await grace.wait_for_reply(room, lost, crypto_bot.bot_id, timeout=30)

    assert TOLD in notice.body and notice.content["msgtype"] == "m.notice"
    assert notice.content["org.agentspaces.covers"] == [lost]
    await assert_stored_encrypted(grace, room, notice.event_id)
    session_id = (await grace.get_event(room, lost))["content"]["session_id"]
    assert session_id in grace.key_requests, "the bot asked grace's device for the key"
    assert "\nagentspaces_undecryptable_total 1\n" in await web_page(crypto_bot, "metrics")
    assert "<dt>Undecryptable messages</dt><dd>1</dd>" in await web_page(crypto_bot, "status")
    # Told once: a restart does not tell it again, and the room goes on.
    await crypto_bot.restart()
    assert (await grace.ask(room, "after", crypto_bot.bot_id, timeout=30)).body.startswith("after")
    assert len(grace.replies_to(room, lost, crypto_bot.bot_id)) == 1


async def test_a_key_that_arrives_late_gets_the_message_answered_once(
    crypto_bot: Deployment, make_crypto_user
) -> None:
    heidi = await make_crypto_user("heidi")
    room = (await encrypted_room(heidi, crypto_bot, {"rooms.key_wait": 30})).rooms["echo"]
    await heidi.ask(room, "first", crypto_bot.bot_id, timeout=30)

    late, share_key = await heidi.send_with_key_withheld(room, "my key comes late")
    await asyncio.sleep(3)
    await share_key(crypto_bot.bot_id)

    (reply,) = await answers(heidi, room, late, crypto_bot)
    assert reply.body.startswith("my key comes late\n\n(context: 3 turns"), reply.body
    assert TOLD not in reply.body
    await heidi.ask(room, "then", crypto_bot.bot_id)
    assert len(heidi.replies_to(room, late, crypto_bot.bot_id)) == 1


async def test_without_crypto_an_encrypted_room_gets_the_plain_notice(
    bot: Deployment, make_crypto_user
) -> None:
    ivan = await make_crypto_user("ivan")

    group = await ivan.create_room(invite=[bot.bot_id], encrypted=True)
    await ivan.wait_for(lambda: bot_messages(ivan, group, bot), timeout=30, what="the notice")

    (notice,) = bot_messages(ivan, group, bot)
    assert ivan.raw_types[notice["event_id"]] == "m.room.message", "sent in the clear"
    assert notice["content"]["msgtype"] == "m.notice"
    assert "can't read encrypted messages" in notice["content"]["body"]
    log = bot.server.log_text()
    assert CRYPTO_MISSING in log and CRYPTO_ENABLED not in log


async def test_rooms_encrypt_always_is_rejected_without_crypto(
    bot: Deployment, crypto_bot: Deployment
) -> None:
    offset = len(bot.server.log_text())

    await bot.update_config({"rooms.encrypt": "always"})

    rejected = [
        line
        for line in bot.server.log_text()[offset:].splitlines()
        if "Config change rejected" in line
    ]
    assert any(
        "rooms.encrypt: is 'always', but this maubot client has no encryption support" in line
        for line in rejected
    ), rejected
    stored = YAML(typ="safe").load((await bot.instance())["config"])
    assert stored["rooms"]["encrypt"] == "auto", "the admin UI shows the last valid config"
    # With crypto, the same config is valid.
    offset = len(crypto_bot.server.log_text())
    await crypto_bot.update_config({"rooms.encrypt": "always"})
    assert "Config updated" in crypto_bot.server.log_text()[offset:]
