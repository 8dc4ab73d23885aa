"""Onboarding against the fake homeserver failing on demand: no half state; the user is told."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mautrix.errors import MatrixRequestError

from plugin.agents import find_agent
from plugin.matrix.binding import ANSWERED_TYPE, BINDING_TYPE, SPACE_TYPE
from plugin.matrix.power import room_power_levels, space_power_levels
from tests.config import settings
from tests.fakes.matrix import ALICE, FakeRoom
from tests.fakes.world import World

OWNER = ALICE


async def test_room_creation_failing_after_the_space_is_completed_by_the_next_start(
    world: World,
) -> None:
    fake, store, onboarding = world.fake, world.store, world.parts.onboarding
    # The Space is created, then the working room's creation fails.
    original = fake.create_room

    async def second_fails(**kwargs: Any) -> str:
        if kwargs.get("creation_content") is None and "failed_once" not in fake.calls:
            fake.calls.append("failed_once")
            raise MatrixRequestError("room creation broke")
        return await original(**kwargs)

    fake.create_room = second_fails  # type: ignore[method-assign]

    first = await onboarding.start_message(OWNER)

    assert "Setting up did not finish: creating the room for Echo failed" in first
    assert "send `!ai start` again to finish" in first
    (space_id,) = fake.spaces()
    user = await store.users.get(OWNER)
    assert user is not None and user.space_id == space_id
    assert await store.rooms.of_owner(OWNER) == []

    second = await onboarding.start_message(OWNER)

    assert "I added the missing working room(s): [Echo]" in second
    assert "did not finish" not in second
    assert fake.spaces() == [space_id]
    (room,) = await store.rooms.of_owner(OWNER)
    assert fake.rooms[space_id].state[("m.space.child", room.room_id)] == {"via": ["example.org"]}
    assert fake.account_data[(room.room_id, BINDING_TYPE)]["agent_id"] == "echo"
    assert fake.rooms[room.room_id].members[OWNER] == "invite"


@pytest.mark.parametrize(
    "broken", ["account_data:org.agentspaces.room", "state:m.space.child", "invite_user"]
)
async def test_a_room_broken_halfway_is_abandoned_not_half_made(world: World, broken: str) -> None:
    fake, store, onboarding = world.fake, world.store, world.parts.onboarding
    space_id = await onboarding.ensure_space(OWNER)
    fake.fail[broken] = 1

    reply = await onboarding.start_message(OWNER)

    assert "creating the room for Echo failed" in reply
    # The broken room: the bot left it, the Space has no child for it, the DB has no row.
    assert fake.joined() == [space_id]
    children = [key for key, content in fake.rooms[space_id].state.items() if content]
    assert not [key for key in children if key[0] == "m.space.child"]
    assert await store.rooms.of_owner(OWNER) == []
    await onboarding.start_message(OWNER)
    assert len(await store.rooms.of_owner(OWNER)) == 1


async def test_a_space_without_its_record_is_dropped(world: World) -> None:
    fake, onboarding = world.fake, world.parts.onboarding
    fake.fail[f"account_data:{SPACE_TYPE}"] = 1

    reply = await onboarding.start_message(OWNER)

    assert "setting up your Space failed" in reply and "send `!ai start` again" in reply
    assert fake.joined() == []
    assert await world.store.users.get(OWNER) is None
    assert "Your Space is ready" in await onboarding.start_message(OWNER)
    assert len(fake.spaces()) == 1


async def test_concurrent_starts_make_one_space(world: World) -> None:
    world.fake.create_delay = 0.05

    results = await asyncio.gather(*(world.parts.onboarding.onboard(OWNER) for _ in range(5)))

    assert len({r.space_id for r in results}) == 1
    assert sum(r.created_space for r in results) == 1
    assert len(world.fake.spaces()) == 1
    assert len(await world.store.rooms.of_owner(OWNER)) == 1


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
        {
            "agents": [{"id": "gpt", "name": "Writer", "backend": "echo"}],
            "default_agent": "gpt",
            "onboarding.rooms": ["gpt"],
        }
    )
    gpt = find_agent(current, "GPT")
    writer = find_agent(current, "writer")
    assert gpt is not None and gpt.id == "gpt"
    assert writer is not None and writer.id == "gpt"
    assert find_agent(current, "nope") is None


@pytest.mark.parametrize(
    ("mode", "crypto", "encrypted"),
    [("auto", None, False), ("auto", object(), True), ("always", None, True), ("never", 1, False)],
)
async def test_new_rooms_are_encrypted_only_as_configured(
    world: World, mode: str, crypto: object, encrypted: bool
) -> None:
    world.configure({"rooms.encrypt": mode})
    world.fake.crypto = crypto

    result = await world.parts.onboarding.onboard(OWNER)

    (room,) = result.new_rooms
    state = world.fake.rooms[room.room_id].state
    assert (("m.room.encryption", "") in state) is encrypted


async def test_an_invite_is_marked_answered_once_its_greeting_is_sent(world: World) -> None:
    fake, handler = world.fake, world.parts.membership
    dm, other, mallory = "!dm:example.org", "!other:example.org", "@mallory:elsewhere.org"
    for room_id, inviter in ((dm, OWNER), (other, mallory)):
        fake.rooms[room_id] = FakeRoom(members={inviter: "join", fake.mxid: "invite"})

    fake.fail["send"] = 1
    await handler.handle_invite(dm, OWNER, True, False)
    # The greeting failed: unmarked, the next start answers the invite again.
    assert (dm, ANSWERED_TYPE) not in fake.account_data
    await handler.handle_invite(dm, OWNER, True, False)
    assert fake.account_data[(dm, ANSWERED_TYPE)]["inviter"] == OWNER
    (greeting,) = fake.messages(dm)
    assert greeting.content["body"].startswith("Your Space: ")
    assert greeting.content["msgtype"] == "m.notice"

    await handler.handle_invite(other, mallory, False, False)
    assert fake.rooms[other].members[fake.mxid] == "leave"
    assert (other, ANSWERED_TYPE) not in fake.account_data


async def test_a_binding_change_from_a_row_read_long_ago_keeps_the_changes_since(
    world: World,
) -> None:
    """A compaction reads the room, waits for its agent, then starts a new chat id: a `!ai voice
    on` sent meanwhile stays, in Matrix and in the database."""
    await world.add_room("!room:example.org")
    bindings = world.parts.rooms.bindings
    read_long_ago = await world.room("!room:example.org")

    await bindings.change(read_long_ago, voice=True)
    changed = await bindings.change(read_long_ago, chat_id="chat-after-compaction")

    assert changed.binding.voice and changed.binding.chat_id == "chat-after-compaction"
    stored = await world.room("!room:example.org")
    assert stored.binding == changed.binding
    in_matrix = world.fake.account_data[("!room:example.org", BINDING_TYPE)]
    assert in_matrix["voice"] is True and in_matrix["chat_id"] == "chat-after-compaction"
