"""Power levels of the rooms the bot creates: the bot alone manages their structure.

Who may change what: the owner chats and names their rooms; the structure is the bot's.
"""

from __future__ import annotations

from typing import Any

ADMIN_LEVEL = 100
OWNER_LEVEL = 50
# State the owner must never change: the Space structure, the power levels, the room's identity.
_PROTECTED_STATE = (
    "m.space.child",
    "m.space.parent",
    "m.room.power_levels",
    "m.room.tombstone",
    "m.room.encryption",
    "m.room.server_acl",
    "m.room.history_visibility",
    "m.room.join_rules",
    "m.room.guest_access",
    "m.room.canonical_alias",
)
_NAMING_STATE = ("m.room.name", "m.room.topic", "m.room.avatar")


def _power_levels(owner: str, owner_state: tuple[str, ...]) -> dict[str, Any]:
    events = {name: ADMIN_LEVEL for name in _PROTECTED_STATE + _NAMING_STATE}
    events.update({name: OWNER_LEVEL for name in owner_state})
    return {
        "users": {owner: OWNER_LEVEL},
        "users_default": 0,
        "events_default": 0,
        "state_default": ADMIN_LEVEL,
        "invite": OWNER_LEVEL,
        "kick": ADMIN_LEVEL,
        "ban": ADMIN_LEVEL,
        "redact": ADMIN_LEVEL,
        "events": events,
    }


def space_power_levels(owner: str) -> dict[str, Any]:
    """The owner chats and invites; the Space's name, children and levels stay the bot's."""
    return _power_levels(owner, ())


def room_power_levels(owner: str) -> dict[str, Any]:
    """In a working room the owner may also rename it and set its topic and avatar."""
    return _power_levels(owner, _NAMING_STATE)
