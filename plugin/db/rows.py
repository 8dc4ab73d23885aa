"""The rows of the plugin's tables, as attrs classes built with `from_row`."""

from __future__ import annotations

import time
from typing import Any, TypeVar

import attrs
from attrs import define, fields, frozen

from ..matrix.binding import BINDING_FIELDS, Binding, from_column, to_column

ACTIVE = "active"
ARCHIVED = "archived"
MOVED = "moved"

R = TypeVar("R", bound="Row")


def now_ms() -> int:
    return int(time.time() * 1000)


class Row:
    @classmethod
    def from_row(cls: type[R], row: Any) -> R:
        values = {f.name: row[f.name] for f in fields(cls)}
        for f in fields(cls):
            if f.type in (bool, "bool"):
                values[f.name] = bool(values[f.name])
        return cls(**values)

    @classmethod
    def columns(cls) -> str:
        return ", ".join(f.name for f in fields(cls))

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in fields(type(self)))


@define
class UserRow(Row):
    user_id: str
    space_id: str | None
    created_at: int
    updated_at: int = 0
    # The user was told that their access was revoked; cleared once it returns.
    access_notice: bool = False


@define
class RoomRow(Row):
    """A working room: its binding's fields, what Matrix state says of it, and local bookkeeping."""

    room_id: str
    owner: str
    space_id: str | None
    agent_id: str
    chat_id: str | None
    title: str
    context_start: str | None
    share_memory: bool
    state: str
    moved_to: str | None
    last_event_id: str | None
    last_event_ts: int
    created_at: int
    # When the plugin last changed the row: a reconciliation that read Matrix before then keeps it.
    updated_at: int = 0
    collaborators: tuple[str, ...] = ()
    fork_room: str | None = None
    fork_event: str | None = None
    thread_starts: dict[str, str] = attrs.field(factory=dict)
    voice: bool = False

    @classmethod
    def from_row(cls, row: Any) -> RoomRow:
        room = super().from_row(row)
        for name in ("collaborators", "thread_starts"):
            setattr(room, name, from_column(name, getattr(room, name)))
        return room

    def values(self) -> tuple[Any, ...]:
        return tuple(to_column(f.name, getattr(self, f.name)) for f in fields(type(self)))

    @property
    def binding(self) -> Binding:
        return Binding(**{name: getattr(self, name) for name in BINDING_FIELDS})

    def with_binding(self, binding: Binding) -> RoomRow:
        return attrs.evolve(self, **{name: getattr(binding, name) for name in BINDING_FIELDS})

    @classmethod
    def new(
        cls,
        room_id: str,
        binding: Binding,
        title: str,
        *,
        state: str = ACTIVE,
        moved_to: str | None = None,
        created_at: int | None = None,
    ) -> RoomRow:
        """The row of a room with this binding. The catch-up cursor starts empty."""
        return cls(
            room_id=room_id,
            title=title,
            state=state,
            moved_to=moved_to,
            last_event_id=None,
            last_event_ts=0,
            created_at=now_ms() if created_at is None else created_at,
            updated_at=now_ms(),
            **{name: getattr(binding, name) for name in BINDING_FIELDS},
        )

    def from_matrix(self) -> tuple[Any, ...]:
        """The values that Matrix determines, to compare a cached row with a rebuilt one."""
        return tuple(getattr(self, name) for name in ROOM_MATRIX_COLUMNS)


# Cursors and the creation time are local bookkeeping, not part of what Matrix says.
ROOM_LOCAL_COLUMNS = ("last_event_id", "last_event_ts", "created_at", "updated_at")
ROOM_MATRIX_COLUMNS = tuple(f.name for f in fields(RoomRow) if f.name not in ROOM_LOCAL_COLUMNS)


RECEIVED = "received"
ANSWERING = "answering"
ANSWERED = "answered"
# An encrypted message whose key the bot waits for; the decrypted message takes its place.
AWAITING_KEY = "awaiting_key"


@define
class MessageRow(Row):
    """A message for an agent and where its delivery stands: received, answering, answered (or,
    encrypted, awaiting its key).

    Answered means a final answer, or a final failure notice, is in Matrix."""

    id: int
    event_id: str
    room_id: str
    sender: str
    sent_at: int
    # The event's (decrypted) content as JSON, so that it can be answered after a restart.
    content: str
    state: str
    updated_at: int


@define
class TurnRow(Row):
    id: int
    room_id: str
    event_id: str | None
    role: str
    content: str
    answered: bool
    created_at: int
    # '' for the room's main timeline, else the root of the thread the turn belongs to.
    thread_root: str = ""
    # Who sent a user turn (shared rooms tell the agent who said what).
    sender: str = ""
    # The turn's files as references (JSON, see `media.refs`); never their bytes.
    attachments: str = ""


@define
class MemoryRow(Row):
    id: int
    user_id: str
    content: str
    created_at: int


@define
class UsageRow(Row):
    user_id: str
    day: str
    messages: int
    tokens: int


@define
class AgentUsageRow(Row):
    user_id: str
    agent_id: str
    day: str
    messages: int
    tokens: int


@define
class FeedbackRow(Row):
    """A 👍 ("up") or 👎 ("down") of one person on one of the bot's answers."""

    event_id: str
    user_id: str
    room_id: str
    agent_id: str
    rating: str
    created_at: int


@frozen
class NewTurn:
    """A context turn to add (see `TurnTable.add_answered`)."""

    event_id: str | None
    role: str
    content: str
    # Who sent a user turn.
    sender: str = ""
    # Its files as references (JSON, see `media.refs`).
    files: str = ""
