"""Reconciler.run against a fake homeserver client: a room that errors does not stop the others."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mautrix.errors import MForbidden
from mautrix.util.async_db import Database

from plugin.db import Store
from plugin.matrix_state import BINDING_TYPE, SPACE_TYPE, MatrixRecord
from plugin.migrations import upgrade_table
from plugin.reconcile import Reconciler

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


class FakeApi:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.requests = 0

    async def request(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.requests += 1
        return self.data


class FakeClient:
    mxid = BOT

    def __init__(self, data: dict[str, Any], broken_room: str) -> None:
        self.api = FakeApi(data)
        self.broken_room = broken_room
        self.links: list[str] = []

    async def send_state_event(self, room_id: str, type: Any, content: Any, state_key: str) -> str:
        if state_key == self.broken_room:
            raise MForbidden(403, "not allowed")
        self.links.append(state_key)
        return "$event"


async def no_invites(*args: Any) -> None:
    raise AssertionError("no invites expected")


async def test_a_room_that_errors_does_not_stop_the_others(tmp_path: Path) -> None:
    rooms = ["!a:hs", "!b:hs", "!c:hs"]
    client = FakeClient(sync_without_children(rooms), broken_room="!b:hs")
    db = Database.create(
        f"sqlite:{tmp_path / 'db'}", upgrade_table=upgrade_table, log=logging.getLogger("db")
    )
    await db.start()
    try:
        store = Store(db)
        log = logging.getLogger("reconcile")
        reconciler = Reconciler(client, store, MatrixRecord(client), log, no_invites)  # type: ignore[arg-type]
        report = await reconciler.run()
        assert report.errors == 1
        assert sorted(client.links) == ["!a:hs", "!c:hs"]
        assert report.rooms == 3 and report.finished
        assert {r.room_id for r in await store.all_rooms()} == set(rooms)
        assert client.api.requests == 1
    finally:
        await db.stop()
