"""Onboarding: the Space, its working rooms, the bot's record, and repeated or racing starts."""

from __future__ import annotations

import asyncio

import pytest

from tests.harness.deploy import Deployment
from tests.harness.flows import (
    BINDING_TYPE,
    SPACE_TYPE,
    bot_account_data,
    db_rows,
    onboard,
    room_links,
    space_children,
)
from tests.harness.matrix_user import MatrixError, MatrixUser

TWO_AGENTS = {
    "agents": [
        {"id": "echo", "name": "Echo", "description": "Repeats what you say", "backend": "echo"},
        {"id": "scribe", "name": "Scribe", "description": "Takes notes", "backend": "echo"},
    ],
    "onboarding.rooms": ["echo", "scribe"],
}
VIA = {"via": ["localhost"]}


def _state(state: list[dict], type: str, state_key: str = "") -> dict | None:
    for ev in state:
        if ev["type"] == type and ev["state_key"] == state_key:
            return ev
    return None


async def _start(user: MatrixUser, bot: Deployment, room_id: str) -> str:
    """Sends `!ai start` and returns the Space id from the reply's link."""
    reply = await user.ask(room_id, "!ai start", bot.bot_id, timeout=30)
    links = room_links(reply.body)
    assert links, reply.body
    return links[0]


async def _plain_room(user: MatrixUser, bot: Deployment) -> str:
    room_id = await user.create_room(invite=[bot.bot_id])
    await user.wait_for_membership(room_id, bot.bot_id, "join")
    return room_id


async def test_start_builds_the_space_as_the_user_sees_it(
    bot: Deployment, make_user, db_kind: str, request: pytest.FixtureRequest
) -> None:
    await bot.update_config(TWO_AGENTS)
    alice = await make_user("alice")
    control = await _plain_room(alice, bot)

    space_id = await _start(alice, bot, control)

    # The Space invite arrives from the bot and shows a Space.
    await alice.wait_for(lambda: space_id in alice.invites, what="the Space invite")
    invite_state = alice.invites[space_id]
    assert _state(invite_state, "m.room.create")["content"]["type"] == "m.space"
    assert _state(invite_state, "m.room.member", alice.user_id)["sender"] == bot.bot_id
    await alice.join(space_id)
    state = await alice.full_state(space_id)
    create = _state(state, "m.room.create")
    assert create["content"]["type"] == "m.space"
    assert create["sender"] == bot.bot_id
    assert _state(state, "m.room.join_rules")["content"]["join_rule"] == "invite"
    localpart = alice.user_id[1:].split(":")[0]
    assert _state(state, "m.room.name")["content"]["name"] == f"{localpart} · Agents"
    levels = _state(state, "m.room.power_levels")["content"]
    # Room version 12: the creator (the bot) outranks everyone and is not listed.
    assert levels["users"] == {alice.user_id: 50}
    for protected in ("m.space.child", "m.room.power_levels", "m.room.name", "m.room.tombstone"):
        assert levels["events"][protected] == 100
    assert levels["invite"] <= 50 and levels["events_default"] <= 50
    children = {ev["state_key"]: ev for ev in state if ev["type"] == "m.space.child"}
    assert len(children) == 2
    for ev in children.values():
        assert ev["content"] == VIA
        assert ev["sender"] == bot.bot_id

    # Each working room: invited by the bot, named after its agent, linked back canonically.
    names = {}
    for room_id in children:
        await alice.wait_for(lambda r=room_id: r in alice.invites, what=f"invite to {room_id}")
        assert _state(alice.invites[room_id], "m.room.member", alice.user_id)["sender"] == (
            bot.bot_id
        )
        await alice.join(room_id)
        room_state = await alice.full_state(room_id)
        parent = _state(room_state, "m.space.parent", space_id)
        assert parent["content"] == {**VIA, "canonical": True}
        assert parent["sender"] == bot.bot_id
        assert _state(room_state, "m.room.join_rules")["content"]["join_rule"] == "invite"
        assert _state(room_state, "m.room.encryption") is None
        room_levels = _state(room_state, "m.room.power_levels")["content"]
        assert room_levels["users"] == {alice.user_id: 50}
        assert room_levels["events"]["m.space.parent"] == 100
        names[room_id] = _state(room_state, "m.room.name")["content"]["name"]
    assert sorted(names.values()) == ["Echo", "Scribe"]

    # The bot's record matches the database, room by room.
    assert await bot_account_data(bot, space_id, SPACE_TYPE) == {
        "owner": alice.user_id,
        "version": 1,
    }
    users = await db_rows(bot, db_kind, request, "agent_user")
    assert [(u["user_id"], u["space_id"]) for u in users] == [(alice.user_id, space_id)]
    rows = {r["room_id"]: r for r in await db_rows(bot, db_kind, request, "room")}
    assert set(rows) == set(children)
    for room_id, row in rows.items():
        binding = await bot_account_data(bot, room_id, BINDING_TYPE)
        assert binding == {
            "owner": alice.user_id,
            "space_id": space_id,
            "agent_id": row["agent_id"],
            "chat_id": row["chat_id"],
            "context_start": None,
            "share_memory": True,
            "collaborators": [],
            "fork_room": None,
            "fork_event": None,
            "thread_starts": {},
            "voice": False,
            "version": 1,
        }
        assert row["chat_id"]
        assert (row["owner"], row["space_id"], row["state"]) == (alice.user_id, space_id, "active")
        assert row["title"] == names[room_id]
        assert bool(row["share_memory"]) is True
    assert {r["agent_id"] for r in rows.values()} == {"echo", "scribe"}

    # The owner chats and invites, but cannot change the Space's structure or levels.
    await alice.send_text(space_id, "hello")
    friend = await make_user("friend")
    await alice.invite(space_id, friend.user_id)
    some_room = next(iter(children))
    attempts = [
        (space_id, "m.space.child", VIA, "!elsewhere:localhost"),
        (space_id, "m.space.child", {}, some_room),
        (space_id, "m.room.power_levels", {**levels, "users": {alice.user_id: 100}}, ""),
        (space_id, "m.room.name", {"name": "Mine"}, ""),
        (some_room, "m.space.parent", {}, space_id),
    ]
    for room_id, type, content, key in attempts:
        with pytest.raises(MatrixError) as refused:
            await alice.send_state(room_id, type, content, key)
        assert refused.value.status == 403, (type, key)
    assert set(await space_children(alice, space_id)) == set(children)


async def test_repeated_and_concurrent_starts_give_one_space(
    bot: Deployment, make_user, db_kind: str, request: pytest.FixtureRequest
) -> None:
    bob = await make_user("bob")
    control = await _plain_room(bob, bot)

    first, second = await asyncio.gather(
        bob.send_text(control, "!ai start"), bob.send_text(control, "!ai start")
    )
    replies = await asyncio.gather(
        bob.wait_for_reply(control, first, bot.bot_id, 30),
        bob.wait_for_reply(control, second, bot.bot_id, 30),
    )
    spaces = {room_links(reply.body)[0] for reply in replies}
    assert len(spaces) == 1
    (space_id,) = spaces
    again = await _start(bob, bot, control)
    assert again == space_id

    users = await db_rows(bot, db_kind, request, "agent_user")
    assert [(u["user_id"], u["space_id"]) for u in users] == [(bob.user_id, space_id)]
    rooms = await db_rows(bot, db_kind, request, "room")
    assert [(r["agent_id"], r["space_id"]) for r in rooms] == [("echo", space_id)]
    # Exactly one Space and one room were ever made, as the bot's own rooms show.
    assert await _bot_spaces(bot) == [space_id]

    # The owner leaves the Space: nothing is deleted, and the next start invites them again.
    await bob.join(space_id)
    await bob.wait_for_membership(space_id, bob.user_id, "join")
    await bob.leave(space_id)
    reply = await bob.ask(control, "!ai start", bot.bot_id, timeout=30)
    assert room_links(reply.body)[0] == space_id
    assert "invited you to it again" in reply.body
    await bob.wait_for(lambda: space_id in bob.invites, what="the new Space invite")
    rooms_after = await db_rows(bot, db_kind, request, "room")
    assert [(r["room_id"], r["state"]) for r in rooms_after] == [(rooms[0]["room_id"], "active")]


async def test_a_lost_space_is_replaced_and_its_rooms_move(
    bot: Deployment, make_user, db_kind: str, request: pytest.FixtureRequest
) -> None:
    carol = await make_user("carol")
    onboarded = await onboard(carol, bot)
    room_id = onboarded.rooms["echo"]
    # The bot loses the Space (it left; with room version 12 nobody can kick its creator).
    bot_user = MatrixUser(bot.synapse.url, bot.bot_id, bot.bot_token)
    try:
        await bot_user.leave(onboarded.space_id)
    finally:
        await bot_user.http.close()

    reply = await carol.ask(onboarded.control_room, "!ai start", bot.bot_id, timeout=30)

    new_space = room_links(reply.body)[0]
    assert new_space != onboarded.space_id
    assert "old Space was gone" in reply.body
    await carol.wait_for(lambda: new_space in carol.invites, what="the new Space invite")
    await carol.join(new_space)
    # The working room moved along and no second room was made for the same agent.
    assert await space_children(carol, new_space) == [room_id]
    parents = {
        ev["state_key"]: ev["content"]
        for ev in await carol.full_state(room_id)
        if ev["type"] == "m.space.parent"
    }
    assert parents == {new_space: {**VIA, "canonical": True}, onboarded.space_id: {}}
    binding = await bot_account_data(bot, room_id, BINDING_TYPE)
    assert binding["space_id"] == new_space
    rows = await db_rows(bot, db_kind, request, "room")
    assert [(r["room_id"], r["space_id"]) for r in rows] == [(room_id, new_space)]


async def _bot_spaces(bot: Deployment) -> list[str]:
    """Every Space the bot is in, read with its own token."""
    bot_user = MatrixUser(bot.synapse.url, bot.bot_id, bot.bot_token)
    try:
        spaces = []
        for room_id in await bot_user.joined_rooms():
            create = await bot_user.get_state(room_id, "m.room.create")
            if create.get("type") == "m.space":
                spaces.append(room_id)
        return spaces
    finally:
        await bot_user.http.close()
