"""Shared rooms: who may talk to a room's agent, and when the agent answers.

A working room whose owner added collaborators (`!ai invite`) has more than one human. There the
agent answers a message only when it is called: mentioned (`m.mentions`, which clients also set
on a reply to the bot), named, or answered with a reply fallback that quotes the bot; or every
message with `rooms.group_trigger: all`. The other messages still enter the context, with their
senders, so the agent knows who said what.
"""

from __future__ import annotations

import re

from mautrix.types import MessageEvent

from ..db.rows import RoomRow
from ..ops import access
from ..ops.settings import Settings

ALL = "all"
MENTION = "mention"


def may_talk(settings: Settings, room: RoomRow, user_id: str) -> bool:
    """The owner, an admin, or a collaborator who is still an allowed user."""
    if access.may_act_in_room(settings, room.owner, user_id):
        return True
    return user_id in room.collaborators and access.is_allowed(settings, user_id)


def is_shared(room: RoomRow) -> bool:
    return bool(room.collaborators)


def calls_agent(evt: MessageEvent, room: RoomRow, settings: Settings, bot_id: str) -> bool:
    """Whether the room's agent answers this message (see the module's docstring)."""
    if not is_shared(room) or settings.group_trigger == ALL:
        return True
    content = evt.content.serialize()
    mentions = content.get("m.mentions")
    user_ids = mentions.get("user_ids") if isinstance(mentions, dict) else None
    if isinstance(user_ids, list) and bot_id in user_ids:
        return True
    body = str(content.get("body") or "")
    if body.startswith(f"> <{bot_id}>"):
        return True
    agent = settings.agents.get(room.agent_id)
    names = {bot_id, bot_id[1:].split(":", 1)[0], *([agent.name, agent.id] if agent else [])}
    return any(_names(name, body) for name in names if name)


def _names(name: str, body: str) -> bool:
    return re.search(rf"(?<![\w@]){re.escape(name)}(?!\w)", body, re.IGNORECASE) is not None
