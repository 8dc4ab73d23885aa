"""Room versions: onboarding works on a homeserver without room version 12, and uses 12 where
the homeserver offers it.

The `old_*` fixtures run Synapse 1.130, whose rooms are of version 10 by default. Below version
12 a room's creator has no power of its own: the bot must hold the top level in
`power_levels.users`. From version 12 on, the creator outranks everyone and must not be listed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.harness.deploy import Deployment
from tests.harness.flows import Onboarded, onboard, space_children
from tests.harness.matrix_user import MatrixError, MatrixUser

# Every power level a room's power_levels content can name, with the spec's default.
_ACTION_LEVELS = {"ban": 50, "kick": 50, "redact": 50, "invite": 0, "state_default": 50}
_ACTION_LEVELS |= {"events_default": 0, "users_default": 0}
MakeUser = Callable[[str], Awaitable[MatrixUser]]


async def _room_versions(user: MatrixUser) -> dict[str, Any]:
    """The homeserver's `m.room_versions` capability: its default and the versions it offers."""
    return (await user.request("GET", "/capabilities"))["capabilities"]["m.room_versions"]


def _by_key(state: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(ev["type"], ev["state_key"]): ev for ev in state}


def _room_version(state: list[dict[str, Any]]) -> str:
    # The spec's default when m.room.create names none.
    return _by_key(state)[("m.room.create", "")]["content"].get("room_version", "1")


def _assert_bot_outranks_everyone(state: list[dict[str, Any]], bot_id: str) -> None:
    """By the rule of the room's version: from 12 on, creators have unlimited power and are not
    listed; below 12, the bot must be listed, above every other user and every required level."""
    events = _by_key(state)
    create = events[("m.room.create", "")]
    levels = events[("m.room.power_levels", "")]["content"]
    users = levels.get("users", {})
    version = _room_version(state)
    if version.isdigit() and int(version) >= 12:
        creators = {create["sender"], *create["content"].get("additional_creators", [])}
        assert bot_id in creators, (version, create)
        assert bot_id not in users, (version, users)
        return
    assert bot_id in users, f"room version {version}: the bot is not in {users}"
    top = users[bot_id]
    others = [level for user, level in users.items() if user != bot_id]
    assert all(top > level for level in others), (version, users)
    required = [levels.get(key, default) for key, default in _ACTION_LEVELS.items()]
    required += levels.get("events", {}).values()
    required += levels.get("notifications", {}).values()
    assert top >= max(required), (version, levels)


async def _onboard_and_read(
    user: MatrixUser, bot: Deployment
) -> tuple[Onboarded, list[list[dict[str, Any]]]]:
    """Onboards `user`, and returns the state of the Space and of each working room."""
    onboarded = await onboard(user, bot)
    room_ids = [onboarded.space_id, *onboarded.rooms.values()]
    return onboarded, [await user.full_state(room_id) for room_id in room_ids]


async def test_the_old_homeserver_offers_no_room_version_12(old_make_user: MakeUser) -> None:
    """The premise of the `old_bot` tests: without it they would prove nothing."""
    user = await old_make_user("probe")

    versions = await _room_versions(user)

    assert versions["default"] == "10"
    assert "12" not in versions["available"]


async def test_start_onboards_below_room_version_12(
    old_bot: Deployment, old_make_user: MakeUser
) -> None:
    alice = await old_make_user("alice")

    onboarded, states = await _onboard_and_read(alice, old_bot)

    assert list(onboarded.rooms) == ["echo"]
    space_create = _by_key(states[0])[("m.room.create", "")]
    assert space_create["content"]["type"] == "m.space"
    assert space_create["sender"] == old_bot.bot_id
    for state in states:
        members = {
            key: ev["content"]["membership"]
            for (type, key), ev in _by_key(state).items()
            if type == "m.room.member"
        }
        assert members == {old_bot.bot_id: "join", alice.user_id: "join"}


async def test_the_bot_outranks_everyone_below_room_version_12(
    old_bot: Deployment, old_make_user: MakeUser
) -> None:
    alice = await old_make_user("alice")

    _, states = await _onboard_and_read(alice, old_bot)

    for state in states:
        _assert_bot_outranks_everyone(state, old_bot.bot_id)


async def test_the_owner_cannot_edit_the_space_below_room_version_12(
    old_bot: Deployment, old_make_user: MakeUser
) -> None:
    alice = await old_make_user("alice")
    onboarded = await onboard(alice, old_bot)
    (room_id,) = onboarded.rooms.values()

    # Adding a child and removing the bot's one: power levels must refuse both.
    for state_key, content in [("!elsewhere:localhost", {"via": ["localhost"]}), (room_id, {})]:
        with pytest.raises(MatrixError) as refused:
            await alice.send_state(onboarded.space_id, "m.space.child", content, state_key)
        assert refused.value.status == 403, state_key

    assert await space_children(alice, onboarded.space_id) == [room_id]


async def test_the_agent_answers_below_room_version_12(
    old_bot: Deployment, old_make_user: MakeUser
) -> None:
    alice = await old_make_user("alice")
    onboarded = await onboard(alice, old_bot)

    reply = await alice.ask(onboarded.rooms["echo"], "hello, v10", old_bot.bot_id, timeout=30)

    assert reply.body.startswith("hello, v10")


async def test_rooms_get_version_12_where_the_homeserver_offers_it(
    bot: Deployment, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    assert (await _room_versions(alice))["available"].get("12") == "stable"

    _, states = await _onboard_and_read(alice, bot)

    for state in states:
        assert _room_version(state) == "12"
        _assert_bot_outranks_everyone(state, bot.bot_id)
