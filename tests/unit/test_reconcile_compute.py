"""The pure part of reconciliation: from a Matrix view and DB rows to a plan."""

from __future__ import annotations

import attrs

from plugin.db.rows import ACTIVE, ARCHIVED, MOVED, RoomRow, UserRow
from plugin.matrix.binding import BINDING_TYPE, SPACE_TYPE, deterministic_chat_id
from plugin.startup.discover import MatrixView, RoomView, parse_sliding_sync, parse_sync
from plugin.startup.plan import Plan, compute

BOT = "@bot:hs"


def state_event(sender: str, content: dict, timestamp: int) -> dict:
    return {"sender": sender, "content": content, "origin_server_ts": timestamp}


OWNER = "@alice:hs"
SPACE = "!space:hs"


def space_view(children: list[str], sender: str = BOT) -> RoomView:
    room = RoomView(SPACE, joined=True)
    room.state[("m.room.create", "")] = state_event(BOT, {"type": "m.space"}, 1)
    for child in children:
        room.state[("m.space.child", child)] = state_event(sender, {"via": ["hs"]}, 2)
    room.account_data[SPACE_TYPE] = {"owner": OWNER, "version": 1}
    return room


def working_view(room_id: str, chat_id: str | None = "chat-1", joined: bool = True) -> RoomView:
    room = RoomView(room_id, joined=joined)
    room.state[("m.room.create", "")] = state_event(BOT, {}, 1000)
    room.state[("m.room.name", "")] = state_event(BOT, {"name": "Echo"}, 1001)
    room.state[("m.space.parent", SPACE)] = state_event(BOT, {"via": ["hs"], "canonical": True}, 2)
    room.account_data[BINDING_TYPE] = {
        "owner": OWNER,
        "space_id": SPACE,
        "agent_id": "echo",
        "chat_id": chat_id,
        "context_start": None,
        "share_memory": True,
        "version": 1,
    }
    return room


def view_of(*rooms: RoomView) -> MatrixView:
    return MatrixView(rooms={r.room_id: r for r in rooms})


def apply_plan(plan: Plan, rooms: dict[str, RoomRow], users: dict[str, UserRow]) -> None:
    for row in plan.rooms:
        rooms[row.room_id] = row
    for user_id, space_id in plan.users:
        users[user_id] = UserRow(user_id, space_id, 0)


def test_rebuilds_an_empty_database_and_a_second_run_changes_nothing() -> None:
    view = view_of(space_view(["!a:hs"]), working_view("!a:hs"))
    plan = compute(view, {}, {}, BOT)
    assert [r.room_id for r in plan.rooms] == ["!a:hs"]
    row = plan.rooms[0]
    assert (row.owner, row.agent_id, row.chat_id, row.space_id, row.state, row.title) == (
        OWNER,
        "echo",
        "chat-1",
        SPACE,
        ACTIVE,
        "Echo",
    )
    assert row.created_at == 1000
    assert plan.users == [(OWNER, SPACE)]
    assert (plan.spaces, plan.managed_rooms, plan.recovered) == (1, 1, 1)

    rooms: dict[str, RoomRow] = {}
    users: dict[str, UserRow] = {}
    apply_plan(plan, rooms, users)
    again = compute(view, rooms, users, BOT)
    assert again.rooms == [] and again.users == [] and again.binding_writes == []
    assert again.child_links == [] and again.parent_links == [] and again.recovered == 0


def test_keeps_local_cursor_of_existing_rows() -> None:
    view = view_of(space_view(["!a:hs"]), working_view("!a:hs"))
    first = compute(view, {}, {}, BOT)
    row = attrs.evolve(first.rooms[0], last_event_id="$e", last_event_ts=5, created_at=7)
    plan = compute(view_of(space_view(["!a:hs"]), working_view("!a:hs")), {"!a:hs": row}, {}, BOT)
    assert plan.rooms == []


def test_backfills_a_missing_chat_id_deterministically_and_writes_it_back() -> None:
    view = view_of(space_view(["!a:hs"]), working_view("!a:hs", chat_id=None))
    plan = compute(view, {}, {}, BOT)
    expected = deterministic_chat_id("!a:hs")
    assert plan.rooms[0].chat_id == expected
    assert [(r, b.chat_id) for r, b in plan.binding_writes] == [("!a:hs", expected)]
    assert plan.backfilled == 1
    assert compute(view, {}, {}, BOT).rooms[0].chat_id == expected


def test_restores_a_link_missing_on_one_side() -> None:
    no_child = view_of(space_view([]), working_view("!a:hs"))
    plan = compute(no_child, {}, {}, BOT)
    assert plan.child_links == [(SPACE, "!a:hs")] and plan.rooms[0].state == ACTIVE

    room = working_view("!a:hs")
    del room.state[("m.space.parent", SPACE)]
    plan = compute(view_of(space_view(["!a:hs"]), room), {}, {}, BOT)
    assert plan.parent_links == [("!a:hs", SPACE)] and plan.rooms[0].state == ACTIVE


def test_archives_rooms_unlinked_on_both_sides_or_left_by_the_bot() -> None:
    room = working_view("!a:hs")
    del room.state[("m.space.parent", SPACE)]
    plan = compute(view_of(space_view([]), room), {}, {}, BOT)
    assert plan.rooms[0].state == ARCHIVED and plan.child_links == []

    plan = compute(view_of(space_view(["!a:hs"]), working_view("!a:hs", joined=False)), {}, {}, BOT)
    assert plan.rooms[0].state == ARCHIVED


def test_archives_active_rows_whose_matrix_record_is_gone() -> None:
    view = view_of(space_view(["!a:hs"]), working_view("!a:hs"))
    rows = {r.room_id: r for r in compute(view, {}, {}, BOT).rooms}
    ghost = attrs.evolve(rows["!a:hs"], room_id="!ghost:hs")
    rows[ghost.room_id] = ghost
    plan = compute(view, rows, {}, BOT)
    assert [(r.room_id, r.state) for r in plan.rooms] == [("!ghost:hs", ARCHIVED)]
    assert plan.archived == 1


def test_follows_a_tombstone() -> None:
    room = working_view("!a:hs")
    room.state[("m.room.tombstone", "")] = state_event(OWNER, {"replacement_room": "!b:hs"}, 3)
    plan = compute(view_of(space_view(["!a:hs"]), room), {}, {}, BOT)
    assert (plan.rooms[0].state, plan.rooms[0].moved_to) == (MOVED, "!b:hs")
    assert [new for new, _ in plan.moves] == ["!b:hs"]


def test_only_the_bots_own_data_counts() -> None:
    # A room with a parent link to the Space but no binding from the bot is not managed.
    forged = RoomView("!forged:hs", joined=True)
    forged.state[("m.space.parent", SPACE)] = state_event(OWNER, {"via": ["hs"]}, 1)
    plan = compute(view_of(space_view(["!a:hs"]), working_view("!a:hs"), forged), {}, {}, BOT)
    assert [r.room_id for r in plan.rooms] == ["!a:hs"]
    # A child link that someone else sent does not count as the Space's side of the link.
    plan = compute(view_of(space_view(["!a:hs"], sender=OWNER), working_view("!a:hs")), {}, {}, BOT)
    assert plan.child_links == [(SPACE, "!a:hs")]
    # A Space without the bot's record is not a managed Space.
    space = space_view(["!a:hs"])
    del space.account_data[SPACE_TYPE]
    plan = compute(view_of(space, working_view("!a:hs")), {}, {}, BOT)
    assert plan.spaces == 0 and plan.rooms[0].space_id is None


def test_lost_space_keeps_its_rooms_for_the_next_onboarding() -> None:
    space = space_view(["!a:hs"])
    space.joined = False
    plan = compute(view_of(space, working_view("!a:hs")), {}, {}, BOT)
    assert plan.rooms[0].state == ACTIVE and plan.rooms[0].space_id is None
    assert plan.users == [(OWNER, None)]


def test_parse_sync_reads_rooms_account_data_and_invites() -> None:
    data = {
        "rooms": {
            "join": {
                "!a:hs": {
                    "state": {
                        "events": [
                            {
                                "type": "m.room.name",
                                "state_key": "",
                                "sender": BOT,
                                "content": {"name": "x"},
                                "origin_server_ts": 4,
                            }
                        ]
                    },
                    "account_data": {
                        "events": [{"type": BINDING_TYPE, "content": {"owner": OWNER}}]
                    },
                }
            },
            "leave": {"!b:hs": {}},
            "invite": {
                "!c:hs": {
                    "invite_state": {
                        "events": [
                            {
                                "type": "m.room.member",
                                "state_key": BOT,
                                "sender": OWNER,
                                "content": {"membership": "invite", "is_direct": True},
                            },
                            {
                                "type": "m.room.encryption",
                                "state_key": "",
                                "sender": OWNER,
                                "content": {},
                            },
                        ]
                    }
                }
            },
        }
    }
    view = parse_sync(data, BOT)
    assert view.rooms["!a:hs"].joined and not view.rooms["!b:hs"].joined
    assert view.rooms["!a:hs"].content("m.room.name") == {"name": "x"}
    assert view.rooms["!a:hs"].account_data[BINDING_TYPE] == {"owner": OWNER}
    assert [(i.room_id, i.inviter, i.is_direct, i.encrypted) for i in view.invites] == [
        ("!c:hs", OWNER, True, True)
    ]


def test_parse_sync_applies_the_timelines_state_on_top_of_the_state_section() -> None:
    def ev(key: str, via: list[str]) -> dict:
        return {"type": "m.space.child", "state_key": key, "sender": BOT, "content": {"via": via}}

    data = {
        "rooms": {
            "join": {
                SPACE: {
                    "state": {"events": [ev("!a:hs", ["hs"]), ev("!b:hs", ["hs"])]},
                    "timeline": {
                        "events": [
                            ev("!b:hs", []),
                            {"type": "m.room.message", "sender": OWNER, "content": {"body": "x"}},
                        ]
                    },
                }
            }
        }
    }
    space = parse_sync(data, BOT).rooms[SPACE]
    assert space.content("m.space.child", "!a:hs") == {"via": ["hs"]}
    assert space.content("m.space.child", "!b:hs") == {"via": []}


def test_parse_sliding_sync_reads_rooms_account_data_and_invites() -> None:
    name = {"type": "m.room.name", "state_key": "", "sender": BOT, "content": {"name": "x"}}
    invite = {
        "type": "m.room.member",
        "state_key": BOT,
        "sender": OWNER,
        "content": {"membership": "invite", "is_direct": True},
    }
    data = {
        "pos": "1",
        "rooms": {
            "!a:hs": {"required_state": [name], "timeline": []},
            "!c:hs": {"invite_state": [invite]},
        },
        "extensions": {
            "account_data": {
                "global": [{"type": "m.push_rules", "content": {}}],
                "rooms": {"!a:hs": [{"type": BINDING_TYPE, "content": {"owner": OWNER}}]},
            }
        },
    }
    view = parse_sliding_sync(data, BOT)
    assert list(view.rooms) == ["!a:hs"] and view.rooms["!a:hs"].joined
    assert view.rooms["!a:hs"].content("m.room.name") == {"name": "x"}
    assert view.rooms["!a:hs"].account_data == {BINDING_TYPE: {"owner": OWNER}}
    assert [(i.room_id, i.inviter, i.is_direct, i.encrypted) for i in view.invites] == [
        ("!c:hs", OWNER, True, False)
    ]
