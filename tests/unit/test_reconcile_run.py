"""Reconciler.run against a fake homeserver client."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mautrix.errors import MForbidden, MUnrecognized
from mautrix.types import Event, PaginatedMessages
from mautrix.util.async_db import Database

from plugin.db import Store
from plugin.matrix_state import ANSWERED_TYPE, BINDING_TYPE, SPACE_TYPE, MatrixRecord
from plugin.migrations import upgrade_table
from plugin.reconcile import SLIDING_SYNC_PATH, Reconciler

BOT = "@bot:hs"
OWNER = "@alice:hs"
SPACE = "!space:hs"


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
            "state": {"events": [event("m.space.parent", SPACE, {"via": ["hs"]})]},
            "account_data": {"events": [{"type": BINDING_TYPE, "content": binding}]},
        }
    return {"next_batch": "s", "rooms": {"join": join}}


def as_sliding_sync(data: dict[str, Any]) -> dict[str, Any]:
    """The same rooms as a simplified sliding sync answer: joined rooms and invites only."""
    rooms: dict[str, Any] = {}
    account_data: dict[str, Any] = {}
    for room_id, room in data["rooms"].get("join", {}).items():
        rooms[room_id] = {"required_state": room.get("state", {}).get("events", [])}
        account_data[room_id] = room.get("account_data", {}).get("events", [])
    for room_id, room in data["rooms"].get("invite", {}).items():
        rooms[room_id] = {"invite_state": room["invite_state"]["events"]}
    return {"pos": "1", "rooms": rooms, "extensions": {"account_data": {"rooms": account_data}}}


class FakeApi:
    """Answers /sync with `data`; sliding sync too, in its own shape, when `sliding` is set."""

    def __init__(self, data: dict[str, Any], sliding: bool) -> None:
        self.data = data
        self.sliding = sliding
        self.paths: list[str] = []

    async def request(self, method: Any, path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.paths.append(str(path))
        if str(path) == SLIDING_SYNC_PATH:
            if not self.sliding:
                raise MUnrecognized(404, "Unrecognized request")
            return as_sliding_sync(self.data)
        return self.data


class FakeClient:
    mxid = BOT

    def __init__(
        self,
        data: dict[str, Any],
        broken_room: str = "",
        history: dict[str, list[dict[str, Any]]] | None = None,
        sliding: bool = True,
    ) -> None:
        self.api = FakeApi(data, sliding)
        self.broken_room = broken_room
        self.history = history or {}
        self.links: list[str] = []

    async def get_messages(self, room_id: str, *args: Any, **kwargs: Any) -> PaginatedMessages:
        if room_id not in self.history:
            raise MForbidden(403, "not in the room")
        events = [Event.deserialize({**e, "room_id": room_id}) for e in self.history[room_id]]
        return PaginatedMessages(start="a", end="b", events=events)

    async def send_state_event(self, room_id: str, type: Any, content: Any, state_key: str) -> str:
        if state_key == self.broken_room:
            raise MForbidden(403, "not allowed")
        self.links.append(state_key)
        return "$event"


async def no_invites(*args: Any) -> None:
    raise AssertionError("no invites expected")


@asynccontextmanager
async def store_in(tmp_path: Path) -> AsyncIterator[Store]:
    db = Database.create(
        f"sqlite:{tmp_path / 'db'}", upgrade_table=upgrade_table, log=logging.getLogger("db")
    )
    await db.start()
    try:
        yield Store(db)
    finally:
        await db.stop()


def reconciler_for(client: FakeClient, store: Store, on_invite: Any) -> Reconciler:
    log = logging.getLogger("reconcile")
    return Reconciler(client, store, MatrixRecord(client), log, on_invite)  # type: ignore[arg-type]


@pytest.mark.parametrize("sliding", [True, False], ids=["sliding-sync", "sync"])
async def test_a_room_that_errors_does_not_stop_the_others(tmp_path: Path, sliding: bool) -> None:
    rooms = ["!a:hs", "!b:hs", "!c:hs"]
    client = FakeClient(sync_without_children(rooms), broken_room="!b:hs", sliding=sliding)
    async with store_in(tmp_path) as store:
        report = await reconciler_for(client, store, no_invites).run()
        assert report.errors == 1
        assert sorted(client.links) == ["!a:hs", "!c:hs"]
        assert report.rooms == 3 and report.finished
        assert {r.room_id for r in await store.all_rooms()} == set(rooms)
        # One discovery request: sliding sync, or /sync after the server said it has none.
        expected = [SLIDING_SYNC_PATH] if sliding else [SLIDING_SYNC_PATH, "_matrix/client/v3/sync"]
        assert client.api.paths == expected


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
    tmp_path: Path, sliding: bool
) -> None:
    mallory = "@mallory:hs"
    answered = joined_room(OWNER)
    answered["account_data"] = {"events": [{"type": ANSWERED_TYPE, "content": {}}]}
    encryption = {"type": "m.room.encryption", "state_key": "", "sender": mallory, "content": {}}
    data = {
        "rooms": {
            "join": {
                "!dm:hs": joined_room(OWNER),
                "!group:hs": joined_room(OWNER),
                "!lost:hs": joined_room(mallory, encryption),
                "!answered:hs": answered,
                "!own:hs": joined_room(BOT),
            },
            "leave": {"!left:hs": joined_room(OWNER)},
        }
    }
    history = {
        # Newest first, as /messages returns them backwards.
        "!dm:hs": [
            member(BOT, BOT, {"membership": "join"}, 3),
            member(OWNER, BOT, {"membership": "invite", "is_direct": True}, 2),
        ],
        "!group:hs": [
            member(BOT, BOT, {"membership": "join"}, 5),
            member(mallory, BOT, {"membership": "invite"}, 4),
            member(OWNER, mallory, {"membership": "invite"}, 3),
        ],
    }
    seen: list[tuple[str, str, bool, bool]] = []

    async def on_invite(room_id: str, inviter: str, is_direct: bool, encrypted: bool) -> None:
        seen.append((room_id, inviter, is_direct, encrypted))

    client = FakeClient(data, history=history, sliding=sliding)
    async with store_in(tmp_path) as store:
        report = await reconciler_for(client, store, on_invite).run()
    assert report.errors == 0
    # The invite is read from the room's history; without it, the creator stands for the inviter.
    assert sorted(seen) == [
        ("!dm:hs", OWNER, True, False),
        ("!group:hs", mallory, False, False),
        ("!lost:hs", mallory, False, True),
    ]
