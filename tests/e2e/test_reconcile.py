"""Matrix is the source of truth: restarts, a deleted database, downtime, drift and forgery."""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import quote

import pytest

from tests.harness.deploy import Deployment
from tests.harness.flows import (
    ANSWERED_TYPE,
    BINDING_TYPE,
    Onboarded,
    bot_account_data,
    db_rows,
    delete_plugin_database,
    onboard,
)
from tests.harness.matrix_user import MatrixUser

# The columns that Matrix determines; cursors and timestamps are the cache's own bookkeeping.
ROOM_COLUMNS = (
    "room_id",
    "owner",
    "space_id",
    "agent_id",
    "chat_id",
    "title",
    "context_start",
    "share_memory",
    "state",
    "moved_to",
)
TWO_ROOMS = {
    "agents": [
        {"id": "echo", "name": "Echo", "description": "Repeats", "backend": "echo"},
        {"id": "parrot", "name": "Parrot", "description": "Repeats too", "backend": "echo"},
    ],
    "onboarding.rooms": ["echo", "parrot"],
}
_TURNS = re.compile(r"context: (\d+) turns")


async def topology(bot: Deployment, db_kind: str, request: pytest.FixtureRequest) -> dict:
    rooms = await db_rows(bot, db_kind, request, "room")
    users = await db_rows(bot, db_kind, request, "agent_user")
    return {
        "rooms": sorted(
            tuple(bool(r[c]) if c == "share_memory" else r[c] for c in ROOM_COLUMNS) for r in rooms
        ),
        "users": sorted((u["user_id"], u["space_id"]) for u in users),
    }


def bot_client(bot: Deployment) -> MatrixUser:
    """Acts as the bot's own account, to change Matrix while the plugin is down."""
    return MatrixUser(bot.synapse.url, bot.bot_id, bot.bot_token)


async def setup(
    bot: Deployment, make_user: Any, config: dict | None = None
) -> tuple[MatrixUser, Onboarded]:
    await bot.update_config(config or TWO_ROOMS)
    alice = await make_user("alice")
    return alice, await onboard(alice, bot)


async def test_restart_keeps_routing_with_the_same_chat_ids(
    bot: Deployment, make_user: Any, db_kind: str, request: pytest.FixtureRequest
) -> None:
    alice, home = await setup(bot, make_user)
    before = await topology(bot, db_kind, request)
    assert (await alice.ask(home.rooms["echo"], "before", bot.bot_id)).body.startswith("before")

    await bot.restart()

    assert await topology(bot, db_kind, request) == before
    for agent, room_id in home.rooms.items():
        reply = await alice.ask(room_id, f"after {agent}", bot.bot_id)
        assert reply.body.startswith(f"after {agent}")


async def test_deleted_database_is_rebuilt_identically_from_matrix(
    bot: Deployment, make_user: Any, db_kind: str, request: pytest.FixtureRequest
) -> None:
    alice, home = await setup(bot, make_user)
    room = home.rooms["echo"]
    await alice.ask(room, "one", bot.bot_id)
    await alice.ask(room, "two", bot.bot_id)
    before = await topology(bot, db_kind, request)
    assert len(before["rooms"]) == 2 and all(r[4] for r in before["rooms"])

    await bot.stop()
    await delete_plugin_database(bot, db_kind, request)
    await bot.start()

    assert await topology(bot, db_kind, request) == before
    reply = await alice.ask(room, "three", bot.bot_id)
    # Two exchanges rebuilt from the timeline, plus this message: the context survived.
    assert int(_TURNS.search(reply.body).group(1)) == 5, reply.body


async def test_messages_sent_while_down_are_answered_once_in_order(
    bot: Deployment, make_user: Any
) -> None:
    alice, home = await setup(bot, make_user)
    room = home.rooms["echo"]
    await bot.stop()
    sent = [await alice.send_text(room, f"offline {i}") for i in range(3)]
    await bot.start()

    replies = [await alice.wait_for_reply(room, ev, bot.bot_id, timeout=30) for ev in sent]
    assert [r.body.split("\n")[0] for r in replies] == ["offline 0", "offline 1", "offline 2"]
    order = [e["event_id"] for e in alice.events(room, "m.room.message", bot.bot_id)]
    assert [order.index(r.event_id) for r in replies] == sorted(
        order.index(r.event_id) for r in replies
    )

    await bot.restart()
    # A message after the second restart is answered, and nothing before it is answered again.
    await alice.ask(room, "later", bot.bot_id)
    for ev in sent:
        assert len(alice.replies_to(room, ev, bot.bot_id)) == 1


async def test_catch_up_limits_send_one_notice(bot: Deployment, make_user: Any) -> None:
    alice, home = await setup(bot, make_user, {**TWO_ROOMS, "catch_up.max_per_room": 2})
    room = home.rooms["echo"]
    await bot.stop()
    sent = [await alice.send_text(room, f"queued {i}") for i in range(4)]
    await bot.start()

    for ev in sent[2:]:
        await alice.wait_for_reply(room, ev, bot.bot_id, timeout=30)
    notices = await alice.wait_for(
        lambda: [
            e
            for e in alice.events(room, "m.room.message", bot.bot_id)
            if "were not answered" in e["content"].get("body", "")
        ],
        what="the skipped-messages notice",
    )
    assert len(notices) == 1 and "2 message(s)" in notices[0]["content"]["body"]
    for ev in sent[:2]:
        assert alice.replies_to(room, ev, bot.bot_id) == []


async def test_message_sent_during_startup_is_answered_once(
    bot: Deployment, make_user: Any
) -> None:
    alice, home = await setup(bot, make_user)
    room = home.rooms["echo"]
    await bot.stop()
    starting = asyncio.create_task(asyncio.to_thread(bot.server.start))
    await asyncio.sleep(0.3)
    event_id = await alice.send_text(room, "during startup")
    await starting
    await bot.wait_live()
    await alice.wait_for_reply(room, event_id, bot.bot_id, timeout=30)
    await alice.ask(room, "after startup", bot.bot_id)
    assert len(alice.replies_to(room, event_id, bot.bot_id)) == 1


async def test_reconciliation_repairs_drift_and_ignores_forgeries(
    bot: Deployment, make_user: Any, db_kind: str, request: pytest.FixtureRequest
) -> None:
    config = {
        "agents": [
            {"id": f"a{i}", "name": f"Agent {i}", "description": "", "backend": "echo"}
            for i in range(5)
        ],
        "default_agent": "a0",
        "onboarding.rooms": [f"a{i}" for i in range(5)],
        "access.admins": ["@alice*:{server}"],
    }
    alice, home = await setup(bot, make_user, config)
    space = home.space_id
    no_child, no_parent, unlinked, left, moved = (home.rooms[f"a{i}"] for i in range(5))
    as_bot = bot_client(bot)
    await bot.stop()
    try:
        await as_bot.send_state(space, "m.space.child", {}, state_key=no_child)
        await as_bot.send_state(no_parent, "m.space.parent", {}, state_key=space)
        await as_bot.send_state(space, "m.space.child", {}, state_key=unlinked)
        await as_bot.send_state(unlinked, "m.space.parent", {}, state_key=space)
        await as_bot.leave(left)
        replacement = await as_bot.create_room(name="Agent 4 (upgraded)")
        await as_bot.send_state(
            moved, "m.room.tombstone", {"body": "moved", "replacement_room": replacement}
        )
        # A forged room: the user links it to the Space and invites the bot while it is down.
        forged = await alice.create_room(name="forged", invite=[bot.bot_id])
        await alice.send_state(forged, "m.space.parent", {"via": ["localhost"]}, state_key=space)
    finally:
        await as_bot.http.close()
    await bot.start()

    async def child(room_id: str) -> dict:
        return await alice.get_state(space, "m.space.child", room_id)

    assert (await child(no_child))["via"]
    assert (await alice.get_state(no_parent, "m.space.parent", space))["via"]
    rows = {r["room_id"]: r for r in await db_rows(bot, db_kind, request, "room")}
    assert rows[no_child]["state"] == rows[no_parent]["state"] == "active"
    assert rows[unlinked]["state"] == "archived"
    assert rows[left]["state"] == "archived"
    assert (rows[moved]["state"], rows[moved]["moved_to"]) == ("moved", replacement)
    assert rows[replacement]["state"] == "active"
    assert rows[replacement]["chat_id"] == rows[moved]["chat_id"]
    assert (await child(replacement))["via"]
    assert forged not in rows
    assert await bot_account_data(bot, forged, BINDING_TYPE) is None

    control = home.control_room
    status = await alice.ask(control, "!ai admin status", bot.bot_id)
    assert "repaired=2" in status.body and "archived=2" in status.body, status.body
    assert "errors=0" in status.body, status.body

    # Reconciliation run twice more gives an identical database, and a report with no changes.
    snapshot = await topology(bot, db_kind, request)
    first = await alice.ask(control, "!ai admin reconcile", bot.bot_id)
    second = await alice.ask(control, "!ai admin reconcile", bot.bot_id)
    for report in (first, second):
        assert "recovered=0" in report.body and "repaired=0" in report.body, report.body
        assert "archived=0" in report.body and "backfilled=0" in report.body, report.body
    assert await topology(bot, db_kind, request) == snapshot


async def test_admin_commands_are_for_admins_only(bot: Deployment, make_user: Any) -> None:
    alice, home = await setup(bot, make_user)
    reply = await alice.ask(home.control_room, "!ai admin status", bot.bot_id)
    assert "admins only" in reply.body


async def test_legacy_rows_without_chat_id_are_backfilled_at_start(
    bot: Deployment, make_user: Any, db_kind: str, request: pytest.FixtureRequest
) -> None:
    """A database as version 1 left it (no chat id column), and an older binding without one."""
    alice, home = await setup(bot, make_user)
    kept, older = home.rooms["echo"], home.rooms["parrot"]
    kept_chat = (await bot_account_data(bot, kept, BINDING_TYPE))["chat_id"]
    as_bot = bot_client(bot)
    await bot.stop()
    try:
        binding = await bot_account_data(bot, older, BINDING_TYPE)
        binding.pop("chat_id")
        path = f"/user/{quote(bot.bot_id)}/rooms/{quote(older)}/account_data/{BINDING_TYPE}"
        await as_bot.request("PUT", path, binding)
    finally:
        await as_bot.http.close()
    await downgrade_to_v1(bot, db_kind, request)
    await bot.start()

    rows = {r["room_id"]: r for r in await db_rows(bot, db_kind, request, "room")}
    assert rows[kept]["chat_id"] == kept_chat
    backfilled = rows[older]["chat_id"]
    assert backfilled and backfilled != kept_chat
    assert (await bot_account_data(bot, older, BINDING_TYPE))["chat_id"] == backfilled
    # Deterministic: the same room always gets the same id back.
    from plugin.matrix.binding import deterministic_chat_id

    assert backfilled == deterministic_chat_id(older)
    assert (await alice.ask(older, "still here", bot.bot_id)).body.startswith("still here")


async def downgrade_to_v1(bot: Deployment, db_kind: str, request: pytest.FixtureRequest) -> None:
    # Back to the version 1 schema: without chat ids, and without what later versions added.
    statements = [
        "DROP INDEX context_turn_thread_idx",
        "ALTER TABLE context_turn DROP COLUMN thread_root",
        "ALTER TABLE context_turn DROP COLUMN sender",
        "ALTER TABLE room DROP COLUMN collaborators",
        "ALTER TABLE room DROP COLUMN fork_room",
        "ALTER TABLE room DROP COLUMN fork_event",
        "ALTER TABLE room DROP COLUMN thread_starts",
        "DROP TABLE agent_usage",
        "DROP TABLE feedback",
        "ALTER TABLE room DROP COLUMN chat_id",
        "ALTER TABLE room DROP COLUMN voice",
        "ALTER TABLE context_turn DROP COLUMN attachments",
        "ALTER TABLE room DROP COLUMN updated_at",
        "ALTER TABLE agent_user DROP COLUMN updated_at",
        "ALTER TABLE agent_user DROP COLUMN access_notice",
        "DROP TABLE message",
        "DROP TABLE plugin_state",
        "CREATE TABLE processed_event (event_id TEXT PRIMARY KEY, room_id TEXT NOT NULL, "
        "processed_at BIGINT NOT NULL)",
        "UPDATE version SET version=1",
    ]
    if db_kind == "postgres":
        import psycopg2

        conn = psycopg2.connect(request.getfixturevalue("postgres_url"))
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'SET search_path = "mbp_{bot.instance_id}"')
            for sql in statements:
                cur.execute(sql)
        conn.close()
    else:
        import sqlite3

        conn = sqlite3.connect(bot.server.plugin_db_dir / f"{bot.instance_id}.db")
        for sql in statements:
            conn.execute(sql)
        conn.commit()
        conn.close()


def is_space_invite(room_id: str, state: list[dict]) -> bool:
    return any(
        e["type"] == "m.room.create" and e["content"].get("type") == "m.space" for e in state
    )


@pytest.mark.parametrize("autojoined", [False, True], ids=["pending", "autojoined"])
async def test_invites_that_arrived_while_down_are_answered_once(
    bot: Deployment, make_user: Any, autojoined: bool
) -> None:
    # The harness's prober must stay allowed: it checks that the bot is live after a start.
    await bot.update_config({"access.allowed": ["@alice*:{server}", "@prober*:{server}"]})
    alice = await make_user("alice")
    mallory = await make_user("mallory")
    await bot.stop()
    dm = await alice.create_room(invite=[bot.bot_id], is_direct=True)
    other = await mallory.create_room(invite=[bot.bot_id])
    if autojoined:
        # What maubot's autojoin does when its client sees the invites before the plugin runs.
        as_bot = bot_client(bot)
        try:
            for room_id in (dm, other):
                await as_bot.join(room_id)
        finally:
            await as_bot.http.close()
    await bot.start()

    await alice.wait_for_membership(dm, bot.bot_id, "join", timeout=30)
    assert await alice.wait_for_invite(is_space_invite, timeout=30)
    await mallory.wait_for_membership(other, bot.bot_id, "leave", timeout=30)
    await alice.wait_for(lambda: alice.events(dm, "m.room.message", bot.bot_id), 30, "a greeting")
    answered = await bot_account_data(bot, dm, ANSWERED_TYPE)
    assert answered is not None and answered["inviter"] == alice.user_id

    # Answered is answered: another start greets nobody again.
    await bot.restart()
    probe = await alice.ask(dm, "!ai help", bot.bot_id)
    greetings = [
        e for e in alice.events(dm, "m.room.message", bot.bot_id) if e["event_id"] != probe.event_id
    ]
    assert len(greetings) == 1, greetings


async def test_lost_space_keeps_its_rooms_for_the_next_onboarding(
    bot: Deployment, make_user: Any, db_kind: str, request: pytest.FixtureRequest
) -> None:
    alice, home = await setup(bot, make_user)
    as_bot = bot_client(bot)
    await bot.stop()
    try:
        await as_bot.leave(home.space_id)
    finally:
        await as_bot.http.close()
    await bot.start()

    users = await db_rows(bot, db_kind, request, "agent_user")
    assert [(u["user_id"], u["space_id"]) for u in users] == [(alice.user_id, None)]
    rows = await db_rows(bot, db_kind, request, "room")
    assert {r["room_id"]: r["state"] for r in rows} == {r: "active" for r in home.rooms.values()}
    room = home.rooms["echo"]
    assert (await alice.ask(room, "still routed", bot.bot_id)).body.startswith("still routed")

    again = await onboard(alice, bot)
    assert again.space_id != home.space_id
    assert again.rooms == home.rooms


async def test_a_backlog_counts_against_the_quota_at_its_send_times(
    bot: Deployment, make_user: Any
) -> None:
    alice, home = await setup(bot, make_user, {**TWO_ROOMS, "limits.messages_per_minute": 2})
    room = home.rooms["echo"]
    await bot.stop()
    sent = [await alice.send_text(room, f"backlog {i}") for i in range(5)]
    await bot.start()

    replies = [await alice.wait_for_reply(room, ev, bot.bot_id, timeout=30) for ev in sent[:2]]
    assert [r.body.split("\n")[0] for r in replies] == ["backlog 0", "backlog 1"]

    def notice() -> dict | None:
        for ev in alice.events(room, "m.room.message", bot.bot_id):
            if "While I was offline" in ev["content"].get("body", ""):
                return ev
        return None

    told = await alice.wait_for(notice, 30, "the catch-up's notice")
    assert (
        "3 message(s) here were not answered (3 over the limit of 2 messages a minute)"
        in (told["content"]["body"])
    )
    assert told["content"]["org.agentspaces.covers"] == sent[2:]
    await bot.restart()
    await alice.ask(room, "later", bot.bot_id)
    notices = [
        e
        for e in alice.events(room, "m.room.message", bot.bot_id)
        if "While I was offline" in e["content"].get("body", "")
    ]
    assert len(notices) == 1, "told once, also after another restart"
    for ev in sent[2:]:
        assert alice.replies_to(room, ev, bot.bot_id) == []
