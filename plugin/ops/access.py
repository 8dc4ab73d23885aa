"""Who may use the bot, who is an admin, and who may act in a working room."""

from __future__ import annotations

import fnmatch

from .settings import Settings


def matches(patterns: tuple[str, ...], user_id: str) -> bool:
    # Case-sensitive, because Matrix IDs are; config validation rejects "[" classes.
    return any(fnmatch.fnmatchcase(user_id, pattern) for pattern in patterns)


def is_allowed(settings: Settings, user_id: str) -> bool:
    return matches(settings.allowed, user_id) or is_admin(settings, user_id)


def is_admin(settings: Settings, user_id: str) -> bool:
    return matches(settings.admins, user_id)


def may_act_in_room(settings: Settings, owner: str, user_id: str) -> bool:
    return user_id == owner or is_admin(settings, user_id)
