"""Every SQL statement of the plugin, one class per table.

The SQL uses `$1` placeholders; mautrix translates them for SQLite, so the same text runs on
SQLite and PostgreSQL. Each class runs on a `Database` or on one `Connection` of a transaction.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs
from mautrix.util.async_db import Connection, Database

from ..matrix.binding import BINDING_FIELDS, Binding, to_column
from .cache import MISSING, RowCache
from .rows import (
    ACTIVE,
    ANSWERED,
    AWAITING_KEY,
    ROOM_LOCAL_COLUMNS,
    AgentUsageRow,
    FeedbackRow,
    MemoryRow,
    MessageRow,
    NewTurn,
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
_ROOM_MATCHES = (
    "(LOWER(room_id) LIKE $1 ESCAPE '\\' OR LOWER(title) LIKE $1 ESCAPE '\\' "
    "OR LOWER(owner) LIKE $1 ESCAPE '\\')"
)


def like(search: str) -> str:
    """A LIKE pattern that finds `search` anywhere, case-insensitively, as plain text."""
    escaped = search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


USER_ROLE = "user"


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

    async def count(self) -> int:
        return int(await self.db.fetchval("SELECT COUNT(*) FROM agent_user"))

    async def page(self, search: str, offset: int, limit: int) -> list[tuple[UserRow, int]]:
        """Users whose id contains `search`, by id, each with their number of active rooms."""
        rows = await self.db.fetch(
            f"SELECT {_USER_COLUMNS}, (SELECT COUNT(*) FROM room r WHERE r.owner=u.user_id "
            "AND r.state=$4) AS active_rooms FROM agent_user u "
            f"WHERE LOWER(u.user_id) LIKE $1 ESCAPE '\\' ORDER BY u.user_id LIMIT $2 OFFSET $3",
            like(search),
            limit,
            offset,
            ACTIVE,
        )
        return [(UserRow.from_row(row), int(row["active_rooms"])) for row in rows]

    async def count_matching(self, search: str) -> int:
        return int(
            await self.db.fetchval(
                "SELECT COUNT(*) FROM agent_user WHERE LOWER(user_id) LIKE $1 ESCAPE '\\'",
                like(search),
            )
        )

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
        values = [to_column(name, getattr(binding, name)) for name in BINDING_FIELDS]
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

    async def count_by_state(self) -> dict[str, int]:
        rows = await self.db.fetch("SELECT state, COUNT(*) AS n FROM room GROUP BY state")
        return {row["state"]: int(row["n"]) for row in rows}

    async def page(self, search: str, offset: int, limit: int) -> list[RoomRow]:
        """Rooms whose id, title or owner contains `search`, by room id."""
        rows = await self.db.fetch(
            f"SELECT {_ROOM_COLUMNS} FROM room WHERE {_ROOM_MATCHES} "
            "ORDER BY room_id LIMIT $2 OFFSET $3",
            like(search),
            limit,
            offset,
        )
        return [RoomRow.from_row(row) for row in rows]

    async def count_matching(self, search: str) -> int:
        return int(
            await self.db.fetchval(f"SELECT COUNT(*) FROM room WHERE {_ROOM_MATCHES}", like(search))
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
    """Context turns. `thread` is '' for a room's main timeline, else the thread's root: each
    thread is a conversation of its own."""

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

    async def add_answered(self, room_id: str, turns: Iterable[NewTurn], thread: str = "") -> None:
        """Adds answered turns to one conversation of the room ('' for its main timeline)."""
        records = [
            (room_id, t.event_id, t.role, t.content, True, now_ms(), thread, t.sender, t.files)
            for t in turns
        ]
        await self.db.executemany(
            "INSERT INTO context_turn (room_id, event_id, role, content, answered, created_at, "
            "thread_root, sender, attachments) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            records,
        )

    async def of_room(self, room_id: str, thread: str = "") -> list[TurnRow]:
        rows = await self.db.fetch(
            f"SELECT {TurnRow.columns()} FROM context_turn WHERE room_id=$1 AND thread_root=$2 "
            "ORDER BY id",
            room_id,
            thread,
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

    async def has_any(self, room_id: str, thread: str = "") -> bool:
        return bool(
            await self.db.fetchval(
                "SELECT 1 FROM context_turn WHERE room_id=$1 AND thread_root=$2 LIMIT 1",
                room_id,
                thread,
            )
        )

    async def add_user_turn(
        self,
        room_id: str,
        event_id: str,
        content: str,
        answered: bool,
        thread: str = "",
        sender: str = "",
        attachments: str = "",
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
            "INSERT INTO context_turn (room_id, event_id, role, content, answered, created_at, "
            "thread_root, sender, attachments) SELECT $1, $2, $5, $3, $4, $6, $7, $8, $9 "
            "WHERE NOT EXISTS "
            "(SELECT 1 FROM context_turn WHERE room_id=$1 AND event_id=$2 AND role=$5)",
            room_id,
            event_id,
            content,
            answered,
            USER_ROLE,
            now_ms(),
            thread,
            sender,
            attachments,
        )

    async def set_answered(self, turn_id: int, answered: bool) -> None:
        await self.db.execute("UPDATE context_turn SET answered=$2 WHERE id=$1", turn_id, answered)

    async def set_content(self, turn_id: int, content: str, attachments: str = "") -> None:
        """A turn's text and files as they were sent again (a retry's transcript, say), or as
        an answer was regenerated in place."""
        await self.db.execute(
            "UPDATE context_turn SET content=$2, attachments=$3 WHERE id=$1",
            turn_id,
            content,
            attachments,
        )

    async def delete_before(self, room_id: str, first_kept_id: int, thread: str = "") -> None:
        await self.db.execute(
            "DELETE FROM context_turn WHERE room_id=$1 AND thread_root=$3 AND id<$2",
            room_id,
            first_kept_id,
            thread,
        )

    async def delete_after(self, room_id: str, turn_id: int, thread: str = "") -> None:
        await self.db.execute(
            "DELETE FROM context_turn WHERE room_id=$1 AND thread_root=$3 AND id>$2",
            room_id,
            turn_id,
            thread,
        )

    async def clear(self, room_id: str) -> None:
        """Empties the room's context, its threads' included."""
        await self.db.execute("DELETE FROM context_turn WHERE room_id=$1", room_id)

    async def clear_thread(self, room_id: str, thread: str) -> None:
        await self.db.execute(
            "DELETE FROM context_turn WHERE room_id=$1 AND thread_root=$2", room_id, thread
        )


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


class AgentUsageTable:
    """Messages and tokens per user, agent and day (`!ai usage`); tokens as the server reported
    them, or estimated where it reported none."""

    def __init__(self, db: Executor) -> None:
        self.db = db

    async def add(self, user_id: str, agent_id: str, day: str, messages: int, tokens: int) -> None:
        await self.db.execute(
            "INSERT INTO agent_usage (user_id, agent_id, day, messages, tokens) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, agent_id, day) DO UPDATE SET "
            "messages=agent_usage.messages+excluded.messages, "
            "tokens=agent_usage.tokens+excluded.tokens",
            user_id,
            agent_id,
            day,
            messages,
            tokens,
        )

    async def since(self, user_id: str, first_day: str) -> list[AgentUsageRow]:
        rows = await self.db.fetch(
            f"SELECT {AgentUsageRow.columns()} FROM agent_usage WHERE user_id=$1 AND day>=$2 "
            "ORDER BY agent_id, day",
            user_id,
            first_day,
        )
        return [AgentUsageRow.from_row(row) for row in rows]


class FeedbackTable:
    """The ratings of answers (see `FeedbackRow`); a person's new rating of an answer replaces
    their earlier one."""

    def __init__(self, db: Executor) -> None:
        self.db = db

    async def record(self, row: FeedbackRow) -> None:
        await self.db.execute(
            f"INSERT INTO feedback ({FeedbackRow.columns()}) VALUES ($1, $2, $3, $4, $5, $6) "
            "ON CONFLICT (event_id, user_id) DO UPDATE SET rating=excluded.rating, "
            "created_at=excluded.created_at",
            *row.values(),
        )

    async def of_room(self, room_id: str) -> list[FeedbackRow]:
        rows = await self.db.fetch(
            f"SELECT {FeedbackRow.columns()} FROM feedback WHERE room_id=$1 ORDER BY created_at",
            room_id,
        )
        return [FeedbackRow.from_row(row) for row in rows]


class MessageTable:
    """The delivery state of the messages for agents (see `MessageRow`)."""

    def __init__(self, db: Executor) -> None:
        self.db = db

    async def add(
        self, event_id: str, room_id: str, sender: str, sent_at: int, content: str, state: str
    ) -> bool:
        """Records a message. False if it was known already: exactly one caller wins. A message
        recorded as awaiting its key is not known yet: it is replaced, content and state."""
        added = await self.db.fetchval(
            "INSERT INTO message (event_id, room_id, sender, sent_at, content, state, updated_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (event_id) DO UPDATE "
            "SET content=excluded.content, state=excluded.state, updated_at=excluded.updated_at "
            "WHERE message.state=$8 RETURNING id",
            event_id,
            room_id,
            sender,
            sent_at,
            content,
            state,
            now_ms(),
            AWAITING_KEY,
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
