"""The bot's record of a managed room or Space, as it lives in the bot's room account data.

Only the bot's account can write its room account data, so no user can forge a binding. These
are plain values: reading and writing them is `record.MatrixRecord`'s job.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import attrs
from attrs import asdict, define

BINDING_TYPE = "org.agentspaces.room"
SPACE_TYPE = "org.agentspaces.space"
# Set once the bot has answered its invite into a room. maubot's autojoin joins invites even
# while the plugin is stopped; a joined room without this mark is an invite nobody answered yet.
ANSWERED_TYPE = "org.agentspaces.answered"
SCHEMA_VERSION = 1
# Fixed namespace so that a room without a chat id always gets the same one back.
_CHAT_ID_NAMESPACE = uuid.UUID("5b0e6a8e-58a4-4f4e-9d3c-0d5f6b1f7a21")


def new_chat_id() -> str:
    return str(uuid.uuid4())


def deterministic_chat_id(room_id: str) -> str:
    """The chat id of a room that has none (older data): the same room always gets the same id."""
    return str(uuid.uuid5(_CHAT_ID_NAMESPACE, room_id))


@define
class Binding:
    """What binds a working room to its owner, Space, agent and platform chat."""

    owner: str
    space_id: str | None
    agent_id: str
    chat_id: str | None
    context_start: str | None = None
    share_memory: bool = True
    # Shared rooms, forks and thread contexts (see `conversation.threads`, `spaces.collaborators`).
    collaborators: tuple[str, ...] = ()
    fork_room: str | None = None
    fork_event: str | None = None
    # Thread root -> the event that started the thread's current context (a clear or compact).
    thread_starts: dict[str, str] = attrs.field(factory=dict)
    # Answers also arrive as voice messages (`!ai voice on`).
    voice: bool = False
    version: int = SCHEMA_VERSION

    def to_content(self) -> dict[str, Any]:
        content = asdict(self)
        content["collaborators"] = list(self.collaborators)
        return content

    @classmethod
    def from_content(cls, content: dict[str, Any] | None) -> Binding | None:
        """None when the content is not a binding this version of the bot understands."""
        if not isinstance(content, dict):
            return None
        owner, agent_id = content.get("owner"), content.get("agent_id")
        if not isinstance(owner, str) or not isinstance(agent_id, str):
            return None
        chat_id = content.get("chat_id")
        space_id = content.get("space_id")
        context_start = content.get("context_start")
        return cls(
            owner=owner,
            space_id=space_id if isinstance(space_id, str) else None,
            agent_id=agent_id,
            chat_id=chat_id if isinstance(chat_id, str) and chat_id else None,
            context_start=context_start if isinstance(context_start, str) else None,
            share_memory=content.get("share_memory") is not False,
            **_conversation_fields(content),
            voice=content.get("voice") is True,
            version=int(content.get("version") or SCHEMA_VERSION),
        )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _conversation_fields(content: dict[str, Any]) -> dict[str, Any]:
    """The fields of shared rooms, forks and threads; anything malformed reads as absent."""
    collaborators = content.get("collaborators")
    starts = content.get("thread_starts")
    return {
        "collaborators": tuple(
            sorted({c for c in collaborators if isinstance(c, str) and c.startswith("@")})
        )
        if isinstance(collaborators, list)
        else (),
        "fork_room": _text(content.get("fork_room")),
        "fork_event": _text(content.get("fork_event")),
        "thread_starts": {k: v for k, v in starts.items() if _text(k) and _text(v)}
        if isinstance(starts, dict)
        else {},
    }


# The binding's fields that the database caches, one column each: the one list that the DB's
# room row and its upsert derive from.
BINDING_FIELDS = tuple(f.name for f in attrs.fields(Binding) if f.name != "version")
# Binding fields that a DB column holds as JSON text.
JSON_FIELDS = ("collaborators", "thread_starts")


def to_column(name: str, value: Any) -> Any:
    return (
        json.dumps(list(value) if name == "collaborators" else value)
        if name in JSON_FIELDS
        else value
    )


def from_column(name: str, value: Any) -> Any:
    if name not in JSON_FIELDS:
        return value
    decoded = json.loads(value or "null")
    if name == "collaborators":
        return tuple(decoded or ())
    return dict(decoded or {})


@define
class SpaceRecord:
    owner: str
    version: int = SCHEMA_VERSION

    def to_content(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_content(cls, content: dict[str, Any] | None) -> SpaceRecord | None:
        if not isinstance(content, dict) or not isinstance(content.get("owner"), str):
            return None
        return cls(owner=content["owner"], version=int(content.get("version") or SCHEMA_VERSION))
