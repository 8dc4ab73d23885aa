"""Access control: non-allowed users get nothing, other members of a working room are ignored,
invites onboard allowed users, encrypted rooms get one plain notice, and revoking access stops
a user's rooms at once."""

from __future__ import annotations

import asyncio

import pytest

from tests.fakes.servers import FakeOpenAI
from tests.harness.deploy import Deployment
from tests.harness.flows import agent_room, db_rows, onboard, room_links
from tests.harness.matrix_user import MatrixUser

REFUSAL = "Sorry, you are not allowed to use this bot."


def _bot_messages(user: MatrixUser, room_id: str, bot: Deployment) -> list[dict]:
    return user.events(room_id, "m.room.message", bot.bot_id)


async def test_a_non_allowed_user_gets_nothing(
    bot: Deployment, make_user, db_kind: str, request: pytest.FixtureRequest
) -> None:
    frank = await make_user("frank")
    eve = await make_user("eve")
    await bot.update_config({"access.allowed": [frank.user_id]})

    # Eve's invites, to a plain room and to a direct chat, are declined.
    plain = await eve.create_room(invite=[bot.bot_id])
    direct = await eve.create_room(invite=[bot.bot_id], is_direct=True)
    for room_id in (plain, direct):
        await eve.wait_for_membership(room_id, bot.bot_id, "leave")

    # In a room that an allowed user shares with both, Eve's commands get one refusal.
    shared = await frank.create_room(invite=[bot.bot_id, eve.user_id])
    await frank.wait_for_membership(shared, bot.bot_id, "join")
    await eve.join(shared)
    await eve.wait_for_membership(shared, eve.user_id, "join")
    first = await eve.send_text(shared, "!ai start")
    assert (await eve.wait_for_reply(shared, first, bot.bot_id)).body == REFUSAL
    second = await eve.send_text(shared, "!ai start")
    third = await eve.send_text(shared, "!ai new echo")
    # Frank's command is answered after Eve's, so her later ones were seen and stayed silent.
    await frank.ask(shared, "!ai agents", bot.bot_id)
    await asyncio.sleep(0.5)
    assert not eve.replies_to(shared, second, bot.bot_id)
    assert not eve.replies_to(shared, third, bot.bot_id)
    refusals = [ev for ev in _bot_messages(eve, shared, bot) if REFUSAL in ev["content"]["body"]]
    assert len(refusals) == 1

    assert await db_rows(bot, db_kind, request, "agent_user") == []
    assert await db_rows(bot, db_kind, request, "room") == []
    assert eve.invites == {}


async def test_only_the_owner_and_admins_act_in_a_working_room(bot: Deployment, make_user) -> None:
    grace = await make_user("grace")
    guest = await make_user("guest")
    admin = await make_user("admin")
    await bot.update_config({"access.admins": [admin.user_id]})
    onboarded = await onboard(grace, bot)
    room_id = onboarded.rooms["echo"]
    for other in (guest, admin):
        await grace.invite(room_id, other.user_id)
        await other.join(room_id)
        await other.wait_for_membership(room_id, other.user_id, "join")

    ignored = await guest.send_text(room_id, "!ai rename Taken over")
    # The owner's command is answered after the guest's, which stayed unanswered.
    await grace.ask(room_id, "!ai agents", bot.bot_id)
    await asyncio.sleep(0.5)
    assert not guest.replies_to(room_id, ignored, bot.bot_id)
    assert (await grace.get_state(room_id, "m.room.name"))["name"] == "Echo"

    reply = await admin.ask(room_id, "!ai rename Checked by admin", bot.bot_id)
    assert "Renamed this room to Checked by admin." in reply.body
    assert (await grace.get_state(room_id, "m.room.name"))["name"] == "Checked by admin"


async def test_a_direct_chat_invite_onboards_and_encryption_gets_one_notice(
    bot: Deployment, make_user, db_kind: str, request: pytest.FixtureRequest
) -> None:
    heidi = await make_user("heidi")
    encrypted = {
        "initial_state": [
            {
                "type": "m.room.encryption",
                "state_key": "",
                "content": {"algorithm": "m.megolm.v1.aes-sha2"},
            }
        ]
    }

    # An encrypted direct chat: the bot joins, says once that it can't read it, and onboards.
    dm = await heidi.create_room(invite=[bot.bot_id], is_direct=True, **encrypted)
    await heidi.wait_for_membership(dm, bot.bot_id, "join")
    await heidi.wait_for(lambda: _bot_messages(heidi, dm, bot), what="the bot's greeting")
    (greeting,) = _bot_messages(heidi, dm, bot)
    content = greeting["content"]
    assert content["msgtype"] == "m.notice"
    assert "can't read encrypted messages" in content["body"]
    space_id = room_links(content["formatted_body"])[0]
    await heidi.wait_for(lambda: space_id in heidi.invites, what="the Space invite")
    users = await db_rows(bot, db_kind, request, "agent_user")
    assert [(u["user_id"], u["space_id"]) for u in users] == [(heidi.user_id, space_id)]

    # A plain direct chat from the same user points to the same Space, without a notice.
    plain_dm = await heidi.create_room(invite=[bot.bot_id], is_direct=True)
    await heidi.wait_for(lambda: _bot_messages(heidi, plain_dm, bot), what="the DM greeting")
    (dm_greeting,) = _bot_messages(heidi, plain_dm, bot)
    assert "encrypted" not in dm_greeting["content"]["body"]
    assert room_links(dm_greeting["content"]["formatted_body"])[0] == space_id

    # An encrypted group room: the notice, once; a plain group room: silence.
    group = await heidi.create_room(invite=[bot.bot_id], **encrypted)
    quiet = await heidi.create_room(invite=[bot.bot_id])
    await heidi.wait_for(lambda: _bot_messages(heidi, group, bot), what="the encryption notice")
    await heidi.wait_for_membership(quiet, bot.bot_id, "join")
    await heidi.send_text(group, "hello?")
    await heidi.ask(quiet, "!ai agents", bot.bot_id)
    await asyncio.sleep(0.5)
    assert len(_bot_messages(heidi, group, bot)) == 1
    assert "can't read encrypted messages" in _bot_messages(heidi, group, bot)[0]["content"]["body"]
    assert len(_bot_messages(heidi, quiet, bot)) == 1
    users = await db_rows(bot, db_kind, request, "agent_user")
    assert len(users) == 1


async def test_direct_chat_onboarding_can_be_turned_off(
    bot: Deployment, make_user, db_kind: str, request: pytest.FixtureRequest
) -> None:
    ivan = await make_user("ivan")
    await bot.update_config({"onboarding.on_invite": False})
    dm = await ivan.create_room(invite=[bot.bot_id], is_direct=True)
    await ivan.wait_for_membership(dm, bot.bot_id, "join")
    await ivan.ask(dm, "!ai agents", bot.bot_id)
    assert len(_bot_messages(ivan, dm, bot)) == 1
    assert await db_rows(bot, db_kind, request, "agent_user") == []


async def test_revoked_access_stops_the_agent_at_once_and_returns_with_it(
    bot: Deployment, make_user, openai_server: FakeOpenAI
) -> None:
    alice = await make_user("alice")
    agent = openai_server.agent(stream=False)
    config = {"agents": [agent], "default_agent": agent["id"]}
    # The harness's prober stays allowed: it checks that the bot is live after a restart.
    prober = bot.prober.user_id
    room = await agent_room(alice, bot, agent, {"access.allowed": [alice.user_id, prober]})
    assert (await alice.ask(room, "before", bot.bot_id)).body == "reply to: before"

    # The operator removes alice through the admin UI (the management API).
    await bot.update_config({**config, "access.allowed": [prober]})
    told = await alice.ask(room, "while revoked", bot.bot_id)
    silent = await alice.send_text(room, "while still revoked")
    refused = await alice.ask(room, "!ai rooms", bot.bot_id)
    await asyncio.sleep(1)

    assert "access to the agents was withdrawn" in told.body
    assert alice.replies_to(room, silent, bot.bot_id) == [], "told once, not per message"
    assert refused.body == REFUSAL
    assert len(openai_server.requests) == 1, "nothing reached the agent"

    await bot.update_config({**config, "access.allowed": [alice.user_id, prober]})
    assert (await alice.ask(room, "back again", bot.bot_id)).body == "reply to: back again"
    await bot.restart()
    assert alice.replies_to(room, silent, bot.bot_id) == [], "nor answered after a restart"
