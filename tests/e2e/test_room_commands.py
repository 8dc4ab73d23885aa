"""The room commands, each bad input, the owner leaving a room, and a user with 100 rooms."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.harness.deploy import Deployment
from tests.harness.flows import BINDING_TYPE, bot_account_data, db_rows, onboard, room_links
from tests.harness.matrix_user import MatrixUser

TWO_AGENTS = {
    "agents": [
        {"id": "echo", "name": "Echo", "description": "Repeats what you say", "backend": "echo"},
        {"id": "scribe", "name": "Scribe", "description": "Takes notes", "backend": "echo"},
    ]
}


async def _room_row(bot: Deployment, db_kind: str, request, room_id: str) -> dict:
    rows = {r["room_id"]: r for r in await db_rows(bot, db_kind, request, "room")}
    return rows[room_id]


async def _child(user: MatrixUser, space_id: str, room_id: str) -> dict:
    return await user.get_state(space_id, "m.space.child", room_id)


async def test_room_commands_and_their_bad_input(
    bot: Deployment, make_user, db_kind: str, request: pytest.FixtureRequest
) -> None:
    await bot.update_config(TWO_AGENTS)
    dave = await make_user("dave")
    onboarded = await onboard(dave, bot)
    echo_room = onboarded.rooms["echo"]
    control = onboarded.control_room

    async def ask(room_id: str, text: str) -> str:
        return (await dave.ask(room_id, text, bot.bot_id)).body

    async def ask_html(room_id: str, text: str) -> str:
        reply = await dave.ask(room_id, text, bot.bot_id)
        return reply.content.get("formatted_body", "")

    # agents
    listing = await ask(echo_room, "!ai agents")
    assert "**Echo** `echo` (default): Repeats what you say" in listing
    assert "**Scribe** `scribe`: Takes notes" in listing

    # new: bad input, then by id with a title and by display name without one
    assert "Say which agent: `!ai new <agent> [title]`" in await ask(echo_room, "!ai new")
    assert "Unknown agent `nosuch`" in await ask(echo_room, "!ai new nosuch")
    reply = await ask_html(control, "!ai new scribe  Research   notes")
    assert "New room with Scribe" in reply
    (notes_room,) = room_links(reply)
    await dave.wait_for(lambda: notes_room in dave.invites, what="the new room's invite")
    await dave.join(notes_room)
    assert (await dave.get_state(notes_room, "m.room.name"))["name"] == "Research notes"
    assert await dave.get_state(notes_room, "m.space.parent", onboarded.space_id) == {
        "via": ["localhost"],
        "canonical": True,
    }
    assert await _child(dave, onboarded.space_id, notes_room) == {"via": ["localhost"]}
    row = await _room_row(bot, db_kind, request, notes_room)
    assert (row["agent_id"], row["title"], row["state"]) == ("scribe", "Research notes", "active")
    (third_room,) = room_links(await ask_html(echo_room, "!ai new echo"))
    await dave.join(third_room)
    assert (await dave.get_state(third_room, "m.room.name"))["name"] == "Echo"

    # rooms
    listing = await ask_html(echo_room, "!ai rooms")
    assert "<strong>Your working rooms</strong> (3)" in listing
    assert room_links(listing) == [echo_room, notes_room, third_room]
    assert ">Echo</a>: Echo (this room)</li>" in listing
    assert ">Research notes</a>: Scribe</li>" in listing

    # Commands that need a working room, sent from a room that is not one.
    for command in ("use scribe", "rename x", "archive"):
        reply = await ask(control, f"!ai {command}")
        word = command.split()[0]
        assert f"`!ai {word}` works in a working room" in reply, reply

    # use
    assert "Say which agent: `!ai use <agent>`" in await ask(echo_room, "!ai use")
    assert "Unknown agent `robot`" in await ask(echo_room, "!ai use robot")
    assert "already talks to Echo" in await ask(echo_room, "!ai use echo")
    assert "now talks to Scribe" in await ask(echo_room, "!ai use Scribe")
    assert (await bot_account_data(bot, echo_room, BINDING_TYPE))["agent_id"] == "scribe"
    assert (await _room_row(bot, db_kind, request, echo_room))["agent_id"] == "scribe"

    # rename
    assert "Give the new title: `!ai rename <title>`" in await ask(echo_room, "!ai rename")
    assert "too long" in await ask(echo_room, "!ai rename " + "x" * 300)
    assert "Renamed this room to My notes." in await ask(echo_room, "!ai rename My  notes")
    assert (await dave.get_state(echo_room, "m.room.name"))["name"] == "My notes"
    assert (await _room_row(bot, db_kind, request, echo_room))["title"] == "My notes"

    # archive: a farewell, unlinked from the Space, the bot leaves, the history stays
    sent = await dave.send_text(notes_room, "!ai archive")
    await dave.wait_for_membership(notes_room, bot.bot_id, "leave")
    farewell = [
        ev
        for ev in dave.events(notes_room, "m.room.message", bot.bot_id)
        if "Archived" in ev["content"].get("body", "")
    ]
    assert len(farewell) == 1
    assert await _child(dave, onboarded.space_id, notes_room) == {}
    assert await dave.get_state(notes_room, "m.space.parent", onboarded.space_id) == {}
    assert any(ev["event_id"] == sent for ev in dave.events(notes_room))
    assert (await _room_row(bot, db_kind, request, notes_room))["state"] == "archived"
    listing = await ask_html(echo_room, "!ai rooms")
    assert room_links(listing) == [echo_room, third_room]

    # The owner leaving a working room archives it the same way.
    await dave.leave(third_room)
    await dave.wait_for(
        lambda: (
            dave.state[onboarded.space_id]
            .get(("m.space.child", third_room), {})
            .get("content", None)
            == {}
        ),
        what="the left room to be unlinked",
    )
    deadline = time.monotonic() + 10
    while (await _room_row(bot, db_kind, request, third_room))["state"] != "archived":
        assert time.monotonic() < deadline, "the left room was not archived"
        await asyncio.sleep(0.1)
    bot_view = MatrixUser(bot.synapse.url, bot.bot_id, bot.bot_token)
    try:
        assert third_room not in await bot_view.joined_rooms()
    finally:
        await bot_view.http.close()


async def test_a_user_with_100_rooms(bot: Deployment, make_user) -> None:
    await bot.update_config({"limits.rooms_per_user": 150})
    erin = await make_user("erin")
    onboarded = await onboard(erin, bot)
    control = onboarded.control_room

    for batch in range(5):
        sent = await asyncio.gather(
            *(erin.send_text(control, f"!ai new echo Room {batch * 20 + i}") for i in range(20))
        )
        replies = await asyncio.gather(
            *(erin.wait_for_reply(control, event_id, bot.bot_id, 60) for event_id in sent)
        )
        assert all("New room with Echo" in reply.body for reply in replies)

    began = time.monotonic()
    listing = (await erin.ask(control, "!ai rooms", bot.bot_id)).content["formatted_body"]
    assert time.monotonic() - began < 5
    assert "<strong>Your working rooms</strong> (101)" in listing
    assert len(room_links(listing)) == 101
    assert all(f">Room {n}</a>: Echo</li>" in listing for n in range(100))

    began = time.monotonic()
    again = (await erin.ask(control, "!ai start", bot.bot_id)).body
    assert time.monotonic() - began < 5
    assert room_links(again)[0] == onboarded.space_id
    children = [
        ev
        for ev in await erin.full_state(onboarded.space_id)
        if ev["type"] == "m.space.child" and ev["content"]
    ]
    assert len(children) == 101
    reply = await erin.ask(control, "!ai new echo One more", bot.bot_id)
    assert "New room with Echo" in reply.body and len(room_links(reply)) == 1
