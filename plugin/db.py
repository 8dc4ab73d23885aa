"""Database rows and every SQL statement of the plugin, in one place.

The SQL uses `$1` placeholders; mautrix translates them for SQLite, so the same text runs on
SQLite and PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from attrs import define, fields
from mautrix.util.async_db import Database

ACTIVE = "active"
ARCHIVED = "archived"
MOVED = "moved"


def now_ms() -> int:
    return int(time.time() * 1000)


class _Row:
    @classmethod
    def from_row(cls, row: Any) -> Any:
        values = {f.name: row[f.name] for f in fields(cls)}
        for f in fields(cls):
            if f.type in (bool, "bool"):
                values[f.name] = bool(values[f.name])
        return cls(**values)

    @classmethod
    def columns(cls) -> str:
        return ", ".join(f.name for f in fields(cls))


@define
class UserRow(_Row):
    user_id: str
    space_id: str | None
    created_at: int


@define
class RoomRow(_Row):
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

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in fields(RoomRow))


@define
class TurnRow(_Row):
    id: int
    room_id: str
    event_id: str | None
    role: str
    content: str
    answered: bool
    created_at: int


@define
class MemoryRow(_Row):
    id: int
    user_id: str
    content: str
    created_at: int


@define
class UsageRow(_Row):
    user_id: str
    day: str
    messages: int
    tokens: int


_ROOM_COLUMNS = RoomRow.columns()
_ROOM_PLACEHOLDERS = ", ".join(f"${i + 1}" for i in range(len(fields(RoomRow))))
_ROOM_UPSERT = (
    f"INSERT INTO room ({_ROOM_COLUMNS}) VALUES ({_ROOM_PLACEHOLDERS}) "
    "ON CONFLICT (room_id) DO UPDATE SET owner=excluded.owner, space_id=excluded.space_id, "
    "agent_id=excluded.agent_id, chat_id=excluded.chat_id, title=excluded.title, "
    "context_start=excluded.context_start, share_memory=excluded.share_memory, "
    "state=excluded.state, moved_to=excluded.moved_to"
)
_USER_UPSERT = (
    "INSERT INTO agent_user (user_id, space_id, created_at) VALUES ($1, $2, $3) "
    "ON CONFLICT (user_id) DO UPDATE SET space_id=excluded.space_id"
)


class Store:
    """All reads and writes of the plugin's database. One per plugin instance."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # Users

    async def get_user(self, user_id: str) -> UserRow | None:
        row = await self.db.fetchrow(
            f"SELECT {UserRow.columns()} FROM agent_user WHERE user_id=$1", user_id
        )
        return UserRow.from_row(row) if row else None

    async def all_users(self) -> list[UserRow]:
        rows = await self.db.fetch(f"SELECT {UserRow.columns()} FROM agent_user ORDER BY user_id")
        return [UserRow.from_row(row) for row in rows]

    async def upsert_user(self, user_id: str, space_id: str | None) -> None:
        await self.db.execute(_USER_UPSERT, user_id, space_id, now_ms())

    # Spaces

    async def get_user_by_space(self, space_id: str) -> UserRow | None:
        row = await self.db.fetchrow(
            f"SELECT {UserRow.columns()} FROM agent_user WHERE space_id=$1", space_id
        )
        return UserRow.from_row(row) if row else None

    # Rooms

    async def get_room(self, room_id: str) -> RoomRow | None:
        row = await self.db.fetchrow(f"SELECT {_ROOM_COLUMNS} FROM room WHERE room_id=$1", room_id)
        return RoomRow.from_row(row) if row else None

    async def rooms_of(self, owner: str, state: str | None = ACTIVE) -> list[RoomRow]:
        if state is None:
            rows = await self.db.fetch(
                f"SELECT {_ROOM_COLUMNS} FROM room WHERE owner=$1 ORDER BY created_at", owner
            )
        else:
            rows = await self.db.fetch(
                f"SELECT {_ROOM_COLUMNS} FROM room WHERE owner=$1 AND state=$2 ORDER BY created_at",
                owner,
                state,
            )
        return [RoomRow.from_row(row) for row in rows]

    async def active_rooms(self) -> list[RoomRow]:
        rows = await self.db.fetch(
            f"SELECT {_ROOM_COLUMNS} FROM room WHERE state=$1 ORDER BY room_id", ACTIVE
        )
        return [RoomRow.from_row(row) for row in rows]

    async def all_rooms(self) -> list[RoomRow]:
        rows = await self.db.fetch(f"SELECT {_ROOM_COLUMNS} FROM room ORDER BY room_id")
        return [RoomRow.from_row(row) for row in rows]

    async def upsert_room(self, room: RoomRow) -> None:
        await self.db.execute(_ROOM_UPSERT, *room.values())

    async def apply_reconciliation(
        self, rooms: list[RoomRow], users: list[tuple[str, str | None]]
    ) -> None:
        """Writes a reconciliation's changes in one transaction; local data stays untouched."""
        if not rooms and not users:
            return
        now = now_ms()
        async with self.db.acquire() as conn, conn.transaction():
            if rooms:
                await conn.executemany(_ROOM_UPSERT, [room.values() for room in rooms])
            if users:
                await conn.executemany(_USER_UPSERT, [(u, s, now) for u, s in users])

    async def set_room_agent(self, room_id: str, agent_id: str) -> None:
        await self.db.execute("UPDATE room SET agent_id=$2 WHERE room_id=$1", room_id, agent_id)

    async def set_room_title(self, room_id: str, title: str) -> None:
        await self.db.execute("UPDATE room SET title=$2 WHERE room_id=$1", room_id, title)

    async def set_room_share(self, room_id: str, share: bool) -> None:
        await self.db.execute("UPDATE room SET share_memory=$2 WHERE room_id=$1", room_id, share)

    async def set_room_state(self, room_id: str, state: str, moved_to: str | None = None) -> None:
        await self.db.execute(
            "UPDATE room SET state=$2, moved_to=$3 WHERE room_id=$1", room_id, state, moved_to
        )

    async def set_room_cursor(self, room_id: str, event_id: str, timestamp: int) -> None:
        # Only moves forward, so a late catch-up cannot rewind what the live handler advanced.
        await self.db.execute(
            "UPDATE room SET last_event_id=$2, last_event_ts=$3 "
            "WHERE room_id=$1 AND last_event_ts<=$3",
            room_id,
            event_id,
            timestamp,
        )

    async def start_new_context(self, room_id: str, chat_id: str, context_start: str) -> None:
        async with self.db.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE room SET chat_id=$2, context_start=$3 WHERE room_id=$1",
                room_id,
                chat_id,
                context_start,
            )
            await conn.execute("DELETE FROM context_turn WHERE room_id=$1", room_id)

    # Context turns

    async def add_turn(self, room_id: str, event_id: str, role: str, content: str) -> TurnRow:
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

    async def add_turns(self, room_id: str, turns: Iterable[tuple[str | None, str, str]]) -> None:
        """Adds answered turns: (event id, role, content) each."""
        records = [(room_id, ev, role, text, True, now_ms()) for ev, role, text in turns]
        await self.db.executemany(
            "INSERT INTO context_turn (room_id, event_id, role, content, answered, created_at) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            records,
        )

    async def turns(self, room_id: str) -> list[TurnRow]:
        rows = await self.db.fetch(
            f"SELECT {TurnRow.columns()} FROM context_turn WHERE room_id=$1 ORDER BY id", room_id
        )
        return [TurnRow.from_row(row) for row in rows]

    async def rooms_with_turns(self) -> set[str]:
        return {
            row["room_id"]
            for row in await self.db.fetch("SELECT DISTINCT room_id FROM context_turn")
        }

    async def has_turns(self, room_id: str) -> bool:
        return bool(
            await self.db.fetchval("SELECT 1 FROM context_turn WHERE room_id=$1 LIMIT 1", room_id)
        )

    async def delete_turns_before(self, room_id: str, first_kept_id: int) -> None:
        await self.db.execute(
            "DELETE FROM context_turn WHERE room_id=$1 AND id<$2", room_id, first_kept_id
        )

    # Shared memory

    async def memory(self, user_id: str) -> list[MemoryRow]:
        rows = await self.db.fetch(
            f"SELECT {MemoryRow.columns()} FROM memory_entry WHERE user_id=$1 ORDER BY id",
            user_id,
        )
        return [MemoryRow.from_row(row) for row in rows]

    async def add_memory(self, user_id: str, content: str) -> None:
        await self.db.execute(
            "INSERT INTO memory_entry (user_id, content, created_at) VALUES ($1, $2, $3)",
            user_id,
            content,
            now_ms(),
        )

    async def delete_memory(self, user_id: str, entry_id: int | None) -> None:
        if entry_id is None:
            await self.db.execute("DELETE FROM memory_entry WHERE user_id=$1", user_id)
        else:
            await self.db.execute(
                "DELETE FROM memory_entry WHERE user_id=$1 AND id=$2", user_id, entry_id
            )

    # Processed marks

    async def claim_event(self, event_id: str, room_id: str) -> bool:
        """Marks an event as handled. False if it already was: exactly one caller wins."""
        claimed = await self.db.fetchval(
            "INSERT INTO processed_event (event_id, room_id, processed_at) VALUES ($1, $2, $3) "
            "ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
            event_id,
            room_id,
            now_ms(),
        )
        return claimed is not None

    async def is_processed(self, event_id: str) -> bool:
        return bool(
            await self.db.fetchval("SELECT 1 FROM processed_event WHERE event_id=$1", event_id)
        )

    # Usage

    async def add_usage(self, user_id: str, day: str, messages: int, tokens: int) -> None:
        await self.db.execute(
            "INSERT INTO usage (user_id, day, messages, tokens) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (user_id, day) DO UPDATE SET messages=usage.messages+excluded.messages, "
            "tokens=usage.tokens+excluded.tokens",
            user_id,
            day,
            messages,
            tokens,
        )

    async def get_usage(self, user_id: str, day: str) -> UsageRow | None:
        row = await self.db.fetchrow(
            f"SELECT {UsageRow.columns()} FROM usage WHERE user_id=$1 AND day=$2", user_id, day
        )
        return UsageRow.from_row(row) if row else None

    # Dispatch and context

    async def turn_for_event(self, room_id: str, event_id: str) -> TurnRow | None:
        row = await self.db.fetchrow(
            f"SELECT {TurnRow.columns()} FROM context_turn WHERE room_id=$1 AND event_id=$2 "
            "ORDER BY id LIMIT 1",
            room_id,
            event_id,
        )
        return TurnRow.from_row(row) if row else None

    async def delete_turns_after(self, room_id: str, turn_id: int) -> None:
        await self.db.execute(
            "DELETE FROM context_turn WHERE room_id=$1 AND id>$2", room_id, turn_id
        )

    async def set_turn_answered(self, turn_id: int, answered: bool) -> None:
        await self.db.execute("UPDATE context_turn SET answered=$2 WHERE id=$1", turn_id, answered)

    async def unclaim_event(self, event_id: str) -> None:
        """Forgets a claim whose event was never answered, so that the catch-up answers it."""
        await self.db.execute("DELETE FROM processed_event WHERE event_id=$1", event_id)
