"""The command router: which command runs, who may run it, where, and the one reply the user gets,
sent through the outbox, whatever the handler did."""

from __future__ import annotations

from mautrix.types import MessageEvent

from plugin.db.rows import NewTurn
from plugin.matrix.binding import BINDING_TYPE
from tests.fakes.matrix import ALICE
from tests.fakes.world import World

ROOM = "!room:example.org"
DM = "!dm:example.org"
ROOT = "@root:example.org"
EVE = "@eve:elsewhere.org"


def reply(world: World, evt: MessageEvent) -> str | None:
    """The bot's reply to a command, if it sent one."""
    return world.fake.final_texts(evt.room_id).get(evt.event_id)


def replies(world: World, room_id: str) -> list[str]:
    return world.fake.bodies(room_id)


async def test_the_longest_command_name_wins(world: World) -> None:
    router = world.parts.router
    for args, name, rest in [
        ("context", "context", ""),
        ("context clear", "context clear", ""),
        ("Context  CLEAR now please", "context clear", "now please"),
        ("context share off", "context share", "off"),
        ("admin status", "admin status", ""),
        ("remember context clear", "remember", "context clear"),
    ]:
        spec, found_rest = router.find(args)
        assert spec is not None and (spec.name, found_rest) == (name, rest), args

    await world.add_room(ROOM)
    clear = await world.command(ROOM, "context clear")
    show = await world.command(ROOM, "context")

    assert (reply(world, clear) or "").startswith("Context cleared. New chat id:")
    assert (reply(world, show) or "").startswith("**Context of this room**")


async def test_unknown_and_empty_commands_point_to_help(world: World) -> None:
    unknown = await world.command(DM, "frobnicate now")
    empty = await world.command(DM, "")
    asked = await world.command(DM, "help")

    assert reply(world, unknown) == "Unknown command `frobnicate`. Send `!ai help` for the list."
    assert reply(world, empty) == "Send `!ai help` for the list of commands."
    listing = reply(world, asked) or ""
    assert listing.startswith("**Agent Spaces commands**")
    assert "- `!ai context clear`: " in listing and "- `!ai new <agent> [title]`: " in listing


async def test_admin_commands_are_for_admins_only(world: World) -> None:
    world.configure({"access.admins": [ROOT]})

    refused = await world.command(DM, "admin status")
    allowed = await world.command(DM, "admin status", sender=ROOT)
    user_help = await world.command(DM, "help")
    admin_help = await world.command(DM, "help", sender=ROOT)

    assert reply(world, refused) == "`!ai admin status` is for admins only."
    assert reply(world, allowed) == "No reconciliation has run yet.\n\nNo catch-up has run yet."
    assert "admin" not in (reply(world, user_help) or "")
    assert "- `!ai admin reconcile`: " in (reply(world, admin_help) or "")


async def test_room_commands_need_a_working_room(world: World) -> None:
    await world.add_room(ROOM)
    await world.store.rooms.set_state(ROOM, "archived")

    for room_id in (DM, ROOM):
        evt = await world.command(room_id, "context clear")
        assert reply(world, evt) == (
            "`!ai context clear` works in a working room. Send `!ai rooms` to list yours, "
            "or `!ai start` to set up your Space."
        )
    assert (ROOM, BINDING_TYPE) not in world.fake.account_data


async def test_other_members_of_a_working_room_are_ignored(world: World) -> None:
    await world.add_room(ROOM)
    world.configure({"access.admins": [ROOT]})

    await world.command(ROOM, "context clear", sender="@mallory:example.org")
    assert replies(world, ROOM) == []

    by_admin = await world.command(ROOM, "context", sender=ROOT)
    assert (reply(world, by_admin) or "").startswith("**Context of this room**")


async def test_users_not_allowed_are_refused_once_per_interval(world: World) -> None:
    first = await world.command(DM, "help", sender=EVE)
    await world.command(DM, "start", sender=EVE)
    other = await world.command(DM, "help", sender="@zed:elsewhere.org")

    assert reply(world, first) == "Sorry, you are not allowed to use this bot."
    assert reply(world, other) == "Sorry, you are not allowed to use this bot."
    assert len(replies(world, DM)) == 2
    assert world.fake.spaces() == [], "nothing ran for them"


async def test_a_usage_error_is_the_whole_reply(world: World) -> None:
    await world.add_room(ROOM)

    remember = await world.command(DM, "remember")
    use = await world.command(ROOM, "use nope")

    assert reply(world, remember) == (
        "Say what to remember: `!ai remember I prefer short answers`."
    )
    assert (reply(world, use) or "").startswith("Unknown agent `nope`. Choose one of `echo`")


async def test_a_homeserver_error_in_a_command_is_told_in_one_reply(world: World) -> None:
    room = await world.add_room(ROOM)
    await world.store.turns.add_answered(ROOM, [NewTurn("$e", "user", "kept")])
    world.fake.fail[f"account_data:{BINDING_TYPE}"] = 2

    clear = await world.command(ROOM, "context clear")
    share = await world.command(ROOM, "context share off")

    for evt in (clear, share):
        text = reply(world, evt) or ""
        assert text.startswith("The homeserver refused that (")
        assert text.endswith("), so it may be done only in part. Send it again later to finish.")
    assert len(replies(world, ROOM)) == 2
    # Matrix refused the change, so the database did not take it either.
    assert (ROOM, BINDING_TYPE) not in world.fake.account_data
    after = await world.room(ROOM)
    assert (after.chat_id, after.share_memory) == (room.chat_id, True)
    assert [t.content for t in await world.store.turns.of_room(ROOM)] == ["kept"]


async def test_replies_go_through_the_outbox(world: World) -> None:
    world.fake.rate_limited, world.fake.retry_after_ms = 2, 0

    evt = await world.command(DM, "agents")

    assert world.fake.rate_limit_hits == 2, "the outbox waited out the rate limit"
    (sent,) = world.fake.messages(DM)
    assert sent.content["msgtype"] == "m.notice"
    assert sent.content["m.relates_to"] == {"m.in_reply_to": {"event_id": evt.event_id}}
    assert sent.content["body"].startswith("**Agents**")
    assert "<strong>Agents</strong>" in sent.content["formatted_body"]


async def test_a_reply_that_cannot_be_sent_ends_the_command_quietly(world: World) -> None:
    world.fake.fail["send"] = 1

    await world.command(DM, "help")

    assert replies(world, DM) == []
    assert world.fake.calls.count("send") == 1


async def test_commands_of_the_owner_run_in_their_rooms(world: World) -> None:
    await world.add_room(ROOM)

    rooms = await world.command(ROOM, "rooms")
    rename = await world.command(ROOM, "rename Travel plans")

    assert (reply(world, rooms) or "").startswith("**Your working rooms** (1)")
    assert "(this room)" in (reply(world, rooms) or "")
    assert reply(world, rename) == "Renamed this room to Travel plans."
    assert (await world.room(ROOM)).title == "Travel plans"
    assert world.fake.rooms[ROOM].state[("m.room.name", "")] == {"name": "Travel plans"}
    assert ALICE in world.fake.rooms[ROOM].members
