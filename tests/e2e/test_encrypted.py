"""Encrypted rooms, end to end: a maubot with crypto talks megolm with a user's device, and a
maubot without crypto still tells an encrypted room that it cannot read it."""

from __future__ import annotations

from attrs import define

from tests.harness.crypto_user import ENCRYPTED, CryptoMatrixUser
from tests.harness.deploy import Deployment
from tests.harness.flows import join_space, room_links
from tests.harness.maubot_server import CRYPTO_ENABLED, CRYPTO_MISSING

# The current plugin may greet a direct chat twice (the invite is handled again when the bot's
# own invite event shows up in the joined room's timeline), so the onboarding greeting is found
# by its text rather than by being the only message.
READY = "Your Space is ready"


@define
class DirectOnboarding:
    dm: str
    greeting: dict
    space_id: str
    rooms: dict[str, str]  # agent_id -> working room


def bot_messages(user: CryptoMatrixUser, room_id: str, bot: Deployment) -> list[dict]:
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


async def assert_stored_encrypted(user: CryptoMatrixUser, room_id: str, event_id: str) -> None:
    """The homeserver holds only ciphertext: what the user read was decrypted on its device."""
    assert user.raw_types[event_id] == ENCRYPTED
    stored = await user.get_event(room_id, event_id)
    assert stored["type"] == ENCRYPTED
    assert "body" not in stored["content"] and stored["content"]["ciphertext"]


async def test_an_encrypted_direct_chat_onboards_into_encrypted_rooms(
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
    for room_id in onboarded.rooms.values():
        encryption = await alice.get_state(room_id, "m.room.encryption")
        assert encryption["algorithm"] == "m.megolm.v1.aes-sha2"
    assert not alice.undecrypted and not alice.crypto_errors
    log = crypto_bot.server.log_text()
    assert CRYPTO_ENABLED in log and CRYPTO_MISSING not in log


async def test_an_encrypted_working_room_gets_the_streamed_reply(
    crypto_bot: Deployment, make_crypto_user
) -> None:
    await crypto_bot.update_config({"dispatch.edit_interval": 0.2})
    bob = await make_crypto_user("bob")
    room = (await onboard_by_direct_chat(bob, crypto_bot)).rooms["echo"]
    text = "a secret question, sent encrypted and streamed back one word at a time to the room"

    event_id = await bob.send_text(room, text)
    reply = await bob.wait_for_reply(room, event_id, crypto_bot.bot_id, timeout=30)

    assert reply.body.startswith(f"{text}\n\n(context: 1 turn, ~")
    assert reply.edits >= 1, "the echo agent streams: its reply is edited as it grows"
    await assert_stored_encrypted(bob, room, event_id)
    bot_events = bob.events(room, sender=crypto_bot.bot_id)
    sent = [ev for ev in bot_events if ev["event_id"] in bob.encrypted]
    assert len(sent) == reply.edits + 1, "the reply and each of its edits were encrypted"
    for ev in sent:
        await assert_stored_encrypted(bob, room, ev["event_id"])
    assert not bob.undecrypted and not bob.crypto_errors


async def test_without_crypto_an_encrypted_room_gets_the_plain_notice(
    bot: Deployment, make_crypto_user
) -> None:
    carol = await make_crypto_user("carol")

    group = await carol.create_room(invite=[bot.bot_id], encrypted=True)
    await carol.wait_for(lambda: bot_messages(carol, group, bot), timeout=30, what="the notice")

    (notice,) = bot_messages(carol, group, bot)
    assert carol.raw_types[notice["event_id"]] == "m.room.message", "sent in the clear"
    assert notice["content"]["msgtype"] == "m.notice"
    assert "can't read encrypted messages" in notice["content"]["body"]
    log = bot.server.log_text()
    assert CRYPTO_MISSING in log and CRYPTO_ENABLED not in log


async def test_a_message_whose_key_was_never_shared_stays_undecryptable(
    crypto_bot: Deployment, make_crypto_user
) -> None:
    dave = await make_crypto_user("dave")
    room = await dave.create_room(invite=[crypto_bot.bot_id], encrypted=True)
    await dave.wait_for_membership(room, crypto_bot.bot_id, "join")

    event_id = await dave.send_undecryptable(room, "nobody can read this")

    failed = f"Failed to decrypt {event_id}"
    await dave.wait_for(lambda: failed in crypto_bot.server.log_text(), what="the bot to try")
    await assert_stored_encrypted(dave, room, event_id)
    await dave.wait_for(lambda: event_id in dave.undecrypted, what="the event in dave's sync")
    assert not dave.events(room, "m.room.message"), "not even its sender can read it"
