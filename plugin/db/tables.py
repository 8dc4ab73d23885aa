"""Every SQL statement of the plugin, one class per table.

The SQL uses `$1` placeholders; mautrix translates them for SQLite, so the same text runs on
SQLite and PostgreSQL. Each class runs on a `Database` or on one `Connection` of a transaction.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs
from mautrix.util.async_db import Connection, Database

from ..matrix.binding import BINDING_FIELDS, Binding
from .cache import MISSING, RowCache
from .rows import (
    ACTIVE,
    ANSWERED,
    ROOM_LOCAL_COLUMNS,
    MemoryRow,
    MessageRow,
    RoomRow,
    TurnRow,
    UsageRow,
    UserRow,
    now_ms,
)

Executor = Database | Connection

_ROOM_COLUMNS = RoomRow.columns()
_ROOM_NAMES = _ROOM_COLUMNS.split(", ")
_ROOM_PLACEHOLDERS = ", ".join(f"${i + 1}" for i in range(len(_ROOM_NAMES)))
# An upsert updates what Matrix says of a room; cursors and the creation time stay.
_ROOM_UPSERT = (
    f"INSERT INTO room ({_ROOM_COLUMNS}) VALUES ({_ROOM_PLACEHOLDERS}) "
    "ON CONFLICT (room_id) DO UPDATE SET "
    + ", ".join(
        f"{name}=excluded.{name}"
        for name in _ROOM_NAMES
        if name == "updated_at" or (name != "room_id" and name not in ROOM_LOCAL_COLUMNS)
    )
)
# The same, unless the plugin changed the row after a given time (a live reconciliation's start).
_ROOM_UPSERT_UNCHANGED = _ROOM_UPSERT + f" WHERE room.updated_at <= ${len(_ROOM_NAMES) + 1}"
_ROOM_SET_BINDING = (
    "UPDATE room SET "
    + ", ".join(f"{name}=${i + 3}" for i, name in enumerate(BINDING_FIELDS))
    + ", updated_at=$2 WHERE room_id=$1"
)
_USER_COLUMNS = UserRow.columns()
_USER_UPSERT = (
    "INSERT INTO agent_user (user_id, space_id, created_at, updated_at) VALUES ($1, $2, $3, $3) "
    "ON CONFLICT (user_id) DO UPDATE SET space_id=excluded.space_id, updated_at=excluded.updated_at"
)
_USER_UPSERT_UNCHANGED = (
    "INSERT INTO agent_user (user_id, space_id, created_at, updated_at) VALUES ($1, $2, $3, 0) "
    "ON CONFLICT (user_id) DO UPDATE SET space_id=excluded.space_id "
    "WHERE agent_user.updated_at <= $4"
)
_MESSAGE_COLUMNS = MessageRow.columns()
USER_ROLE = "user"
# A turn to add: (event id, role, content), or with its attachments (JSON) as a fourth item.
NewTurn = tuple[str | None, str, str] | tuple[str | None, str, str, str]


class UserTable:
    def __init__(self, db: Executor) -> None:
        self.db = db

    async def get(self, user_id: str) -> UserRow | None:
        row = await self.db.fetchrow(
            f"SELECT {_USER_COLUMNS} FROM agent_user WHERE user_id=$1", user_id
        )
        return UserRow.from_row(row) if row else None

    async def by_space(self, space_id: str) -> UserRow | None:
        row = await self.db.fetchrow(
            f"SELECT {_USER_COLUMNS} FROM agent_user WHERE space_id=$1", space_id
        )
        return UserRow.from_row(row) if row else None

    async def all(self) -> list[UserRow]:
        rows = await self.db.fetch(f"SELECT {_USER_COLUMNS} FROM agent_user ORDER BY user_id")
        return [UserRow.from_row(row) for row in rows]

    async def upsert(self, user_id: str, space_id: str | None) -> None:
        await self.db.execute(_USER_UPSERT, user_id, space_id, now_ms())

    async def upsert_unchanged_since(self, users: list[tuple[str, str | None]], since: int) -> None:
        """Upserts users, except those the plugin changed after `since`."""
        now = now_ms()
        await self.db.executemany(_USER_UPSERT_UNCHANGED, [(u, s, now, since) for u, s in users])

    async def told_revoked(self) -> list[str]:
        """The users who were told that their access was withdrawn."""
        rows = await self.db.fetch("SELECT user_id FROM agent_user WHERE access_notice")
        return [row["user_id"] for row in rows]

    async def set_access_notice(self, user_id: str, told: bool) -> None:
        await self.db.execute(
            "INSERT INTO agent_user (user_id, space_id, created_at, access_notice) "
            "VALUES ($1, NULL, $2, $3) "
            "ON CONFLICT (user_id) DO UPDATE SET access_notice=excluded.access_notice",
            user_id,
            now_ms(),
            told,
        )


class RoomTable:
    def __init__(self, db: Executor, cache: RowCache[RoomRow | None], fill: bool) -> None:
        self.db = db
        # Rooms by id (None: not a working room). Filled only outside transactions.
        self.cache = cache
        self.fill = fill

    async def get(self, room_id: str) -> RoomRow | None:
        cached = self.cache.get(room_id)
        if cached is not MISSING:
            return cached  # type: ignore[return-value]
        row = await self.db.fetchrow(f"SELECT {_ROOM_COLUMNS} FROM room WHERE room_id=$1", room_id)
        room = RoomRow.from_row(row) if row else None
        if self.fill:
            self.cache.put(room_id, room)
        return room

    async def of_owner(self, owner: str) -> list[RoomRow]:
        """The owner's active rooms, oldest first."""
        rows = await self.db.fetch(
            f"SELECT {_ROOM_COLUMNS} FROM room WHERE owner=$1 AND state=$2 ORDER BY created_at",
            owner,
            ACTIVE,
        )
        return [RoomRow.from_row(row) for row in rows]

    async def active(self) -> list[RoomRow]:
        rows = await self.db.fetch(
            f"SELECT {_ROOM_COLUMNS} FROM room WHERE state=$1 ORDER BY room_id", ACTIVE
        )
        return [RoomRow.from_row(row) for row in rows]

    async def all(self) -> list[RoomRow]:
        rows = await self.db.fetch(f"SELECT {_ROOM_COLUMNS} FROM room ORDER BY room_id")
        return [RoomRow.from_row(row) for row in rows]

    async def upsert(self, room: RoomRow) -> None:
        """Inserts a room, or updates what Matrix says of it; local bookkeeping stays."""
        self.cache.forget(room.room_id)
        await self.db.execute(_ROOM_UPSERT, *room.values())

    async def upsert_unchanged_since(self, rooms: list[RoomRow], since: int) -> None:
        """Upserts rooms, except those the plugin changed after `since`."""
        for room in rooms:
            self.cache.forget(room.room_id)
        await self.db.executemany(
            _ROOM_UPSERT_UNCHANGED, [(*room.values(), since) for room in rooms]
        )

    async def set_binding(self, room_id: str, binding: Binding) -> None:
        self.cache.forget(room_id)
        values = [getattr(binding, name) for name in BINDING_FIELDS]
        await self.db.execute(_ROOM_SET_BINDING, room_id, now_ms(), *values)

    async def set_title(self, room_id: str, title: str) -> None:
        self.cache.forget(room_id)
        await self.db.execute(
            "UPDATE room SET title=$2, updated_at=$3 WHERE room_id=$1", room_id, title, now_ms()
        )

    async def set_state(self, room_id: str, state: str, moved_to: str | None = None) -> None:
        self.cache.forget(room_id)
        await self.db.execute(
            "UPDATE room SET state=$2, moved_to=$3, updated_at=$4 WHERE room_id=$1",
            room_id,
            state,
            moved_to,
            now_ms(),
        )

    async def count_of_owner(self, owner: str) -> int:
        return int(
            await self.db.fetchval(
                "SELECT COUNT(*) FROM room WHERE owner=$1 AND state=$2", owner, ACTIVE
            )
        )

    async def set_cursor(self, room_id: str, event_id: str, timestamp: int) -> None:
        # The cached row follows rather than being forgotten, so that a busy room is not read
        # again for every message. Only moves forward, so a late catch-up cannot rewind what
        # the live handler advanced.
        cached = self.cache.get(room_id)
        if isinstance(cached, RoomRow) and cached.last_event_ts <= timestamp:
            self.cache.put(
                room_id, attrs.evolve(cached, last_event_id=event_id, last_event_ts=timestamp)
            )
        await self.db.execute(
            "UPDATE room SET last_event_id=$2, last_event_ts=$3 "
            "WHERE room_id=$1 AND last_event_ts<=$3",
            room_id,
            event_id,
            timestamp,
        )


class TurnTable:
    def __init__(self, db: Executor) -> None:
        self.db = db

    async def add_pending(self, room_id: str, event_id: str, role: str, content: str) -> TurnRow:
        """Adds a turn still to be answered, and returns its row."""
        row = await self.db.fetchrow(
            "INSERT INTO context_turn (room_id, event_id, role, content, answered, created_at) "
            f"VALUES ($1, $2, $3, $4, false, $5) RETURNING {TurnRow.columns()}",
            room_id,
            event_id,
            role,
            content,
            now_ms(),
        )
        return TurnRow.from_row(row)

    async def add_answered(self, room_id: str, turns: Iterable[NewTurn]) -> None:
        """Adds answered turns: (event id, role, content), and the turn's attachments (JSON) as
        a fourth item where it has any."""
        records = [
            (room_id, t[0], t[1], t[2], True, now_ms(), t[3] if len(t) > 3 else "")  # type: ignore[misc]
            for t in turns
        ]
        await self.db.executemany(
            "INSERT INTO context_turn "
            "(room_id, event_id, role, content, answered, created_at, attachments) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)",
            records,
        )

    async def of_room(self, room_id: str) -> list[TurnRow]:
        rows = await self.db.fetch(
            f"SELECT {TurnRow.columns()} FROM context_turn WHERE room_id=$1 ORDER BY id", room_id
        )
        return [TurnRow.from_row(row) for row in rows]

    async def for_event(self, room_id: str, event_id: str) -> TurnRow | None:
        row = await self.db.fetchrow(
            f"SELECT {TurnRow.columns()} FROM context_turn WHERE room_id=$1 AND event_id=$2 "
            "ORDER BY id LIMIT 1",
            room_id,
            event_id,
        )
        return TurnRow.from_row(row) if row else None

    async def rooms_with_turns(self) -> set[str]:
        rows = await self.db.fetch("SELECT DISTINCT room_id FROM context_turn")
        return {row["room_id"] for row in rows}

    async def has_any(self, room_id: str) -> bool:
        return bool(
            await self.db.fetchval("SELECT 1 FROM context_turn WHERE room_id=$1 LIMIT 1", room_id)
        )

    async def add_user_turn(
        self, room_id: str, event_id: str, content: str, answered: bool, attachments: str = ""
    ) -> None:
        """The turn of a user message, once: a message answered again after a restart may have
        one already, which then takes the new state."""
        await self.db.execute(
            "UPDATE context_turn SET answered=$3, content=$5, attachments=$6 "
            "WHERE room_id=$1 AND event_id=$2 AND role=$4",
            room_id,
            event_id,
            answered,
            USER_ROLE,
            content,
            attachments,
        )
        await self.db.execute(
            "INSERT INTO context_turn "
            "(room_id, event_id, role, content, answered, created_at, attachments) "
            "SELECT $1, $2, $5, $3, $4, $6, $7 WHERE NOT EXISTS (SELECT 1 FROM context_turn "
            "WHERE room_id=$1 AND event_id=$2 AND role=$5)",
            room_id,
            event_id,
            content,
            answered,
            USER_ROLE,
            now_ms(),
            attachments,
        )

    async def set_content(self, turn_id: int, content: str, attachments: str) -> None:
        """A retried turn's text and files as they were sent (a transcript, say)."""
        await self.db.execute(
            "UPDATE context_turn SET content=$2, attachments=$3 WHERE id=$1",
            turn_id,
            content,
            attachments,
        )

    async def set_answered(self, turn_id: int, answered: bool) -> None:
        await self.db.execute("UPDATE context_turn SET answered=$2 WHERE id=$1", turn_id, answered)

    async def delete_before(self, room_id: str, first_kept_id: int) -> None:
        await self.db.execute(
            "DELETE FROM context_turn WHERE room_id=$1 AND id<$2", room_id, first_kept_id
        )

    async def delete_after(self, room_id: str, turn_id: int) -> None:
        await self.db.execute(
            "DELETE FROM context_turn WHERE room_id=$1 AND id>$2", room_id, turn_id
        )

    async def clear(self, room_id: str) -> None:
        await self.db.execute("DELETE FROM context_turn WHERE room_id=$1", room_id)


class MemoryTable:
    def __init__(self, db: Executor, cache: RowCache[list[MemoryRow]], fill: bool) -> None:
        self.db = db
        # Each user's entries, which every answer in their rooms reads.
        self.cache = cache
        self.fill = fill

    async def of_user(self, user_id: str) -> list[MemoryRow]:
        cached = self.cache.get(user_id)
        if cached is not MISSING:
            return list(cached)  # type: ignore[call-overload]
        rows = await self.db.fetch(
            f"SELECT {MemoryRow.columns()} FROM memory_entry WHERE user_id=$1 ORDER BY id",
            user_id,
        )
        entries = [MemoryRow.from_row(row) for row in rows]
        if self.fill:
            self.cache.put(user_id, entries)
        return list(entries)

    async def add(self, user_id: str, content: str) -> None:
        self.cache.forget(user_id)
        await self.db.execute(
            "INSERT INTO memory_entry (user_id, content, created_at) VALUES ($1, $2, $3)",
            user_id,
            content,
            now_ms(),
        )

    async def delete(self, user_id: str, entry_id: int | None) -> None:
        """Deletes one entry, or all of the user's with None."""
        self.cache.forget(user_id)
        if entry_id is None:
            await self.db.execute("DELETE FROM memory_entry WHERE user_id=$1", user_id)
        else:
            await self.db.execute(
                "DELETE FROM memory_entry WHERE user_id=$1 AND id=$2", user_id, entry_id
            )


class UsageTable:
    def __init__(self, db: Executor) -> None:
        self.db = db

    async def add(self, user_id: str, day: str, messages: int, tokens: int) -> None:
        await self.db.execute(
            "INSERT INTO usage (user_id, day, messages, tokens) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (user_id, day) DO UPDATE SET messages=usage.messages+excluded.messages, "
            "tokens=usage.tokens+excluded.tokens",
            user_id,
            day,
            messages,
            tokens,
        )

    async def get(self, user_id: str, day: str) -> UsageRow | None:
        row = await self.db.fetchrow(
            f"SELECT {UsageRow.columns()} FROM usage WHERE user_id=$1 AND day=$2", user_id, day
        )
        return UsageRow.from_row(row) if row else None


class MessageTable:
    """The delivery state of the messages for agents (see `MessageRow`)."""

    def __init__(self, db: Executor) -> None:
        self.db = db

    async def add(
        self, event_id: str, room_id: str, sender: str, sent_at: int, content: str, state: str
    ) -> bool:
        """Records a message. False if it was known already: exactly one caller wins."""
        added = await self.db.fetchval(
            "INSERT INTO message (event_id, room_id, sender, sent_at, content, state, updated_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (event_id) DO NOTHING "
            "RETURNING id",
            event_id,
            room_id,
            sender,
            sent_at,
            content,
            state,
            now_ms(),
        )
        return added is not None

    async def get(self, event_id: str) -> MessageRow | None:
        row = await self.db.fetchrow(
            f"SELECT {_MESSAGE_COLUMNS} FROM message WHERE event_id=$1", event_id
        )
        return MessageRow.from_row(row) if row else None

    async def states(self, event_ids: list[str]) -> dict[str, str]:
        """The state of each of these events that is known."""
        if not event_ids:
            return {}
        placeholders = ", ".join(f"${i + 1}" for i in range(len(event_ids)))
        rows = await self.db.fetch(
            f"SELECT event_id, state FROM message WHERE event_id IN ({placeholders})", *event_ids
        )
        return {row["event_id"]: row["state"] for row in rows}

    async def unanswered(self) -> list[MessageRow]:
        """Every message not answered yet, in the order they arrived."""
        rows = await self.db.fetch(
            f"SELECT {_MESSAGE_COLUMNS} FROM message WHERE state<>$1 ORDER BY id", ANSWERED
        )
        return [MessageRow.from_row(row) for row in rows]

    async def set_state(self, event_id: str, state: str) -> None:
        await self.db.execute(
            "UPDATE message SET state=$2, updated_at=$3 WHERE event_id=$1",
            event_id,
            state,
            now_ms(),
        )

    async def prune(self, answered_before: int) -> None:
        """Forgets answered messages older than the catch-up ever looks back."""
        await self.db.execute(
            "DELETE FROM message WHERE state=$1 AND updated_at<$2", ANSWERED, answered_before
        )


class StateTable:
    """Small named values the plugin keeps for itself, such as the last valid config."""

    def __init__(self, db: Executor) -> None:
        self.db = db

    async def get(self, key: str) -> str | None:
        return await self.db.fetchval("SELECT value FROM plugin_state WHERE key=$1", key)

    async def set(self, key: str, value: str) -> None:
        await self.db.execute(
            "INSERT INTO plugin_state (key, value, updated_at) VALUES ($1, $2, $3) "
            "ON CONFLICT (key) DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at",
            key,
            value,
            now_ms(),
        )
