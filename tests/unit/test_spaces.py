"""Onboarding against a fake homeserver that fails on demand: no half state; the user is told."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mautrix.errors import MatrixRequestError, MForbidden
from mautrix.types import EventType, Member, Membership
from mautrix.util.async_db import Database
from ruamel.yaml import YAML

from plugin.config import Settings, parse_settings
from plugin.db import Store
from plugin.matrix_state import ANSWERED_TYPE, BINDING_TYPE, SPACE_TYPE, MatrixRecord
from plugin.membership import MembershipHandler
from plugin.migrations import upgrade_table
from plugin.spaces import Spaces, find_agent, room_power_levels, space_power_levels

ROOT = Path(__file__).resolve().parents[2]
OWNER = "@alice:hs"


class FakeMatrix:
    """The few client calls Spaces makes, over in-memory rooms. `fail` names calls to break."""

    def __init__(self) -> None:
        self.mxid = "@bot:hs"
        self.crypto = None
        self.rooms: dict[str, dict[str, Any]] = {}
        self.account_data: dict[tuple[str, str], dict] = {}
        self.fail: dict[str, int] = {}  # call name -> how many of the next calls fail
        self.calls: list[str] = []
        self._ids = itertools.count()
        self.create_delay = 0.0

    def _maybe_fail(self, name: str) -> None:
        self.calls.append(name)
        if self.fail.get(name, 0) > 0:
            self.fail[name] -= 1
            raise MatrixRequestError(500, "M_UNKNOWN", f"{name} broke")

    async def create_room(self, **kwargs: Any) -> str:
        self._maybe_fail("create_room")
        await asyncio.sleep(self.create_delay)
        room_id = f"!r{next(self._ids)}:hs"
        self.rooms[room_id] = {"create": kwargs, "state": {}, "members": {self.mxid: "join"}}
        for ev in kwargs.get("initial_state") or []:
            self.rooms[room_id]["state"][(ev["type"], ev["state_key"])] = ev["content"]
        return room_id

    async def send_state_event(
        self, room_id: str, type: EventType, content: Any, state_key: str = ""
    ) -> str:
        self._maybe_fail(f"state:{type}")
        if self.rooms[room_id]["members"].get(self.mxid) != "join":
            raise MForbidden(403, "M_FORBIDDEN", "not in room")
        self.rooms[room_id]["state"][(str(type), state_key)] = content
        return "$event"

    async def get_state_event(self, room_id: str, type: EventType, state_key: str = "") -> Any:
        membership = self.rooms.get(room_id, {}).get("members", {}).get(state_key)
        if membership is None:
            raise MForbidden(403, "M_FORBIDDEN", "unknown")
        return Member(membership=Membership(membership))

    async def invite_user(self, room_id: str, user_id: str) -> None:
        self._maybe_fail("invite_user")
        self.rooms[room_id]["members"][user_id] = "invite"

    async def leave_room(self, room_id: str) -> None:
        self.rooms[room_id]["members"][self.mxid] = "leave"

    async def forget_room(self, room_id: str) -> None:
        pass

    async def get_displayname(self, user_id: str) -> str:
        return "Alice"

    async def join_room(self, room_id: str) -> str:
        self.rooms[room_id]["members"][self.mxid] = "join"
        return room_id

    async def send_markdown(self, room_id: str, markdown: str, **kwargs: Any) -> str:
        self._maybe_fail("send_markdown")
        self.rooms[room_id].setdefault("messages", []).append(markdown)
        return "$message"

    async def set_account_data(self, type: str, content: dict, room_id: str) -> None:
        self._maybe_fail(f"account_data:{type}")
        self.account_data[(room_id, type)] = content

    async def get_account_data(self, type: str, room_id: str) -> dict:
        return self.account_data[(room_id, type)]

    def joined(self) -> list[str]:
        return [r for r, room in self.rooms.items() if room["members"][self.mxid] == "join"]

    def spaces(self) -> list[str]:
        return [
            r for r in self.joined() if self.rooms[r]["create"].get("creation_content") is not None
        ]


def settings(overrides: dict[str, Any] | None = None) -> Settings:
    data = YAML().load((ROOT / "base-config.yaml").read_text())
    data.update(overrides or {})
    return parse_settings(data, "hs")


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[Spaces, FakeMatrix, Store]]:
    db = Database.create(
        f"sqlite:{tmp_path / 'plugin.db'}",
        upgrade_table=upgrade_table,
        log=logging.getLogger("db"),
    )
    await db.start()
    client = FakeMatrix()
    store = Store(db)
    current = settings()
    spaces = Spaces(client, store, MatrixRecord(client), lambda: current, logging.getLogger("t"))
    yield spaces, client, store
    await db.stop()


async def test_room_creation_failing_after_the_space_is_completed_by_the_next_start(
    world: tuple[Spaces, FakeMatrix, Store],
) -> None:
    spaces, client, store = world
    # The Space is created, then the working room's creation fails.
    original = client.create_room

    async def second_fails(**kwargs: Any) -> str:
        if kwargs.get("creation_content") is None and "failed_once" not in client.calls:
            client.calls.append("failed_once")
            raise MatrixRequestError(500, "M_UNKNOWN", "room creation broke")
        return await original(**kwargs)

    client.create_room = second_fails  # type: ignore[method-assign]

    first = await spaces.start_message(OWNER)

    assert "Setting up did not finish: creating the room for Echo failed" in first
    assert "send `!ai start` again to finish" in first
    (space_id,) = client.spaces()
    assert (await store.get_user(OWNER)).space_id == space_id
    assert await store.rooms_of(OWNER) == []

    second = await spaces.start_message(OWNER)

    assert "I added the missing working room(s): [Echo]" in second
    assert "did not finish" not in second
    assert client.spaces() == [space_id]
    (room,) = await store.rooms_of(OWNER)
    assert client.rooms[space_id]["state"][("m.space.child", room.room_id)] == {"via": ["hs"]}
    assert client.account_data[(room.room_id, BINDING_TYPE)]["agent_id"] == "echo"
    assert client.rooms[room.room_id]["members"][OWNER] == "invite"


@pytest.mark.parametrize(
    "broken", ["account_data:org.agentspaces.room", "state:m.space.child", "invite_user"]
)
async def test_a_room_broken_halfway_is_abandoned_not_half_made(
    world: tuple[Spaces, FakeMatrix, Store], broken: str
) -> None:
    spaces, client, store = world
    space_id = await spaces.ensure_space(OWNER)
    client.fail[broken] = 1

    reply = await spaces.start_message(OWNER)

    assert "creating the room for Echo failed" in reply
    # The broken room: the bot left it, the Space has no child for it, the DB has no row.
    assert client.joined() == [space_id]
    children = {k: v for k, v in client.rooms[space_id]["state"].items() if v}
    assert not [k for k in children if k[0] == "m.space.child"]
    assert await store.rooms_of(OWNER) == []
    await spaces.start_message(OWNER)
    assert len(await store.rooms_of(OWNER)) == 1


async def test_a_space_without_its_record_is_dropped(
    world: tuple[Spaces, FakeMatrix, Store],
) -> None:
    spaces, client, store = world
    client.fail[f"account_data:{SPACE_TYPE}"] = 1

    reply = await spaces.start_message(OWNER)

    assert "creating your Space failed" in reply and "send `!ai start` again" in reply
    assert client.joined() == []
    assert await store.get_user(OWNER) is None
    assert "Your Space is ready" in await spaces.start_message(OWNER)
    assert len(client.spaces()) == 1


async def test_concurrent_starts_make_one_space(world: tuple[Spaces, FakeMatrix, Store]) -> None:
    spaces, client, store = world
    client.create_delay = 0.05

    results = await asyncio.gather(*(spaces.onboard(OWNER) for _ in range(5)))

    assert len({r.space_id for r in results}) == 1
    assert sum(r.created_space for r in results) == 1
    assert len(client.spaces()) == 1
    assert len(await store.rooms_of(OWNER)) == 1


def test_power_levels_keep_the_structure_with_the_bot() -> None:
    for levels in (space_power_levels(OWNER), room_power_levels(OWNER)):
        # Room version 12: the creator must not be listed, and outranks everyone anyway.
        assert levels["users"] == {OWNER: 50}
        assert levels["invite"] <= 50 and levels["events_default"] <= 50
        for protected in ("m.space.child", "m.space.parent", "m.room.power_levels"):
            assert levels["events"][protected] == 100
        assert levels["state_default"] == 100
    assert space_power_levels(OWNER)["events"]["m.room.name"] == 100
    assert room_power_levels(OWNER)["events"]["m.room.name"] == 50


def test_agents_are_found_by_id_or_name() -> None:
    current = settings(
        {"agents": [{"id": "gpt", "name": "Writer", "backend": "echo"}], "default_agent": "gpt"}
    )
    assert find_agent(current, "GPT").id == "gpt"
    assert find_agent(current, "writer").id == "gpt"
    assert find_agent(current, "nope") is None


@pytest.mark.parametrize(
    ("mode", "crypto", "encrypted"),
    [("auto", None, False), ("auto", object(), True), ("always", None, True), ("never", 1, False)],
)
async def test_new_rooms_are_encrypted_only_as_configured(
    world: tuple[Spaces, FakeMatrix, Store], mode: str, crypto: object, encrypted: bool
) -> None:
    spaces, client, _ = world
    current = settings({"rooms": {"encrypt": mode}})
    spaces.settings = lambda: current
    client.crypto = crypto

    result = await spaces.onboard(OWNER)

    (room,) = result.new_rooms
    state = client.rooms[room.room_id]["state"]
    assert (("m.room.encryption", "") in state) is encrypted


async def test_an_invite_is_marked_answered_once_its_greeting_is_sent(
    world: tuple[Spaces, FakeMatrix, Store],
) -> None:
    spaces, client, store = world
    current = settings()
    handler = MembershipHandler(
        client, store, spaces, MatrixRecord(client), lambda: current, logging.getLogger("t")
    )
    for room_id, inviter in (("!dm:hs", OWNER), ("!other:hs", "@mallory:elsewhere")):
        client.rooms[room_id] = {"create": {}, "state": {}, "members": {inviter: "join"}}
        client.rooms[room_id]["members"][client.mxid] = "invite"

    client.fail["send_markdown"] = 1
    await handler.handle_invite("!dm:hs", OWNER, True, False)
    # The greeting failed: unmarked, the next start answers the invite again.
    assert ("!dm:hs", ANSWERED_TYPE) not in client.account_data
    await handler.handle_invite("!dm:hs", OWNER, True, False)
    assert client.account_data[("!dm:hs", ANSWERED_TYPE)]["inviter"] == OWNER
    assert client.rooms["!dm:hs"]["messages"][0].startswith("Your Space: ")

    await handler.handle_invite("!other:hs", "@mallory:elsewhere", False, False)
    assert client.rooms["!other:hs"]["members"][client.mxid] == "leave"
    assert ("!other:hs", ANSWERED_TYPE) not in client.account_data
