"""Reconciler.run against the fake homeserver: discovery, repairs, and invites answered late."""

from __future__ import annotations

from typing import Any

import pytest

from plugin.matrix.binding import ANSWERED_TYPE, BINDING_TYPE, SPACE_TYPE
from plugin.startup.discover import SLIDING_SYNC_PATH
from tests.fakes.matrix import ALICE, BOT, FakeRoom
from tests.fakes.world import World

OWNER = ALICE
MALLORY = "@mallory:example.org"
SPACE = "!space:example.org"


def event(type: str, key: str, content: dict[str, Any]) -> dict[str, Any]:
    return {"type": type, "state_key": key, "sender": BOT, "content": content}


def sync_without_children(rooms: list[str]) -> dict[str, Any]:
    join: dict[str, Any] = {
        SPACE: {
            "state": {"events": [event("m.room.create", "", {"type": "m.space"})]},
            "account_data": {"events": [{"type": SPACE_TYPE, "content": {"owner": OWNER}}]},
        }
    }
    for room_id in rooms:
        binding = {"owner": OWNER, "space_id": SPACE, "agent_id": "echo", "chat_id": room_id}
        join[room_id] = {
            "state": {"events": [event("m.space.parent", SPACE, {"via": ["example.org"]})]},
            "account_data": {"events": [{"type": BINDING_TYPE, "content": binding}]},
        }
    return {"next_batch": "s", "rooms": {"join": join}}


Invite = tuple[str, str, bool, bool]


def record_invites(world: World, monkeypatch: pytest.MonkeyPatch) -> list[Invite]:
    """The invites that reconciliation hands to the invite handler, recorded instead."""
    seen: list[Invite] = []

    async def on_invite(room_id: str, inviter: str, is_direct: bool, encrypted: bool) -> None:
        seen.append((room_id, inviter, is_direct, encrypted))

    monkeypatch.setattr(world.parts.startup.reconciler, "on_invite", on_invite)
    return seen


@pytest.mark.parametrize("sliding", [True, False], ids=["sliding-sync", "sync"])
async def test_a_room_that_errors_does_not_stop_the_others(
    world: World, monkeypatch: pytest.MonkeyPatch, sliding: bool
) -> None:
    rooms = ["!a:example.org", "!b:example.org", "!c:example.org"]
    fake = world.fake
    fake.sync_data, fake.sliding = sync_without_children(rooms), sliding
    fake.rooms[SPACE] = FakeRoom(members={BOT: "join"})
    fake.fail["state:m.space.child:!b:example.org"] = 1
    invites = record_invites(world, monkeypatch)

    report = await world.parts.startup.reconciler.run()

    assert report.errors == 1 and invites == []
    children = sorted(key for kind, key in fake.rooms[SPACE].state if kind == "m.space.child")
    assert children == ["!a:example.org", "!c:example.org"]
    assert report.rooms == 3 and report.finished
    assert {r.room_id for r in await world.store.rooms.all()} == set(rooms)
    # One discovery request: sliding sync, or /sync after the server said it has none.
    expected = [SLIDING_SYNC_PATH] if sliding else [SLIDING_SYNC_PATH, "_matrix/client/v3/sync"]
    assert fake.api.paths == expected


def member(sender: str, target: str, content: dict[str, Any], ts: int) -> dict[str, Any]:
    return {
        "type": "m.room.member",
        "state_key": target,
        "sender": sender,
        "content": content,
        "event_id": f"$m{ts}",
        "origin_server_ts": ts,
    }


def joined_room(creator: str, *extra: dict[str, Any]) -> dict[str, Any]:
    create = {"type": "m.room.create", "state_key": "", "sender": creator, "content": {}}
    return {"state": {"events": [create, *extra]}}


@pytest.mark.parametrize("sliding", [True, False], ids=["sliding-sync", "sync"])
async def test_rooms_autojoined_while_stopped_are_answered_as_invites(
    world: World, monkeypatch: pytest.MonkeyPatch, sliding: bool
) -> None:
    answered = joined_room(OWNER)
    answered["account_data"] = {"events": [{"type": ANSWERED_TYPE, "content": {}}]}
    encryption = {"type": "m.room.encryption", "state_key": "", "sender": MALLORY, "content": {}}
    fake = world.fake
    fake.sliding = sliding
    fake.sync_data = {
        "rooms": {
            "join": {
                "!dm:example.org": joined_room(OWNER),
                "!group:example.org": joined_room(OWNER),
                "!lost:example.org": joined_room(MALLORY, encryption),
                "!answered:example.org": answered,
                "!own:example.org": joined_room(BOT),
            },
            "leave": {"!left:example.org": joined_room(OWNER)},
        }
    }
    fake.history = {
        # Newest first, as /messages returns them backwards.
        "!dm:example.org": [
            member(BOT, BOT, {"membership": "join"}, 3),
            member(OWNER, BOT, {"membership": "invite", "is_direct": True}, 2),
        ],
        "!group:example.org": [
            member(BOT, BOT, {"membership": "join"}, 5),
            member(MALLORY, BOT, {"membership": "invite"}, 4),
            member(OWNER, MALLORY, {"membership": "invite"}, 3),
        ],
    }
    seen = record_invites(world, monkeypatch)

    report = await world.parts.startup.reconciler.run()

    assert report.errors == 0
    # The invite is read from the room's history; without it, the creator stands for the inviter.
    assert sorted(seen) == [
        ("!dm:example.org", OWNER, True, False),
        ("!group:example.org", MALLORY, False, False),
        ("!lost:example.org", MALLORY, False, True),
    ]
