"""The plugin's database: a cache of Matrix, plus what exists only here (see migrations)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mautrix.util.async_db import Database

from .cache import RowCache, TransactionCache
from .rows import MemoryRow, RoomRow
from .tables import (
    AgentUsageTable,
    Executor,
    FeedbackTable,
    MemoryTable,
    MessageTable,
    RoomTable,
    StateTable,
    TurnTable,
    UsageTable,
    UserTable,
)

# Rows kept in memory: at most this many rooms, and users' memories.
CACHED_ROOMS = 10_000
CACHED_MEMORIES = 2_000


class Store:
    """The plugin's tables. One per plugin instance; `transaction()` gives one on a connection."""

    def __init__(self, db: Executor, caches: _Caches | None = None) -> None:
        self.db = db
        self.caches = caches or _Caches()
        # A transaction's reads may see what it will roll back: they do not fill the caches.
        fill = isinstance(db, Database)
        self.users = UserTable(db)
        self.rooms = RoomTable(db, self.caches.rooms, fill)
        self.turns = TurnTable(db)
        self.memory = MemoryTable(db, self.caches.memories, fill)
        self.usage = UsageTable(db)
        self.agent_usage = AgentUsageTable(db)
        self.feedback = FeedbackTable(db)
        self.messages = MessageTable(db)
        self.state = StateTable(db)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Store]:
        """The same tables on one connection, committed together (or not at all)."""
        if not isinstance(self.db, Database):
            # Already inside a transaction: its connection carries on.
            yield self
            return
        interrupted: BaseException | None = None
        rooms = TransactionCache(self.caches.rooms)
        memories = TransactionCache(self.caches.memories)
        with rooms.open(), memories.open():
            async with self.db.acquire() as conn:
                try:
                    async with conn.transaction():
                        try:
                            yield Store(conn, _Caches(rooms, memories))
                        except (Exception, GeneratorExit):
                            raise
                        except BaseException as e:
                            # mautrix rolls back on an Exception only: a cancellation (a stop,
                            # a timeout) would leave SQLite's one connection inside the
                            # transaction.
                            interrupted = e
                            raise _RollBack() from e
                except _RollBack:
                    assert interrupted is not None
                    raise interrupted from None


class _Caches:
    def __init__(
        self,
        rooms: RowCache[RoomRow | None] | None = None,
        memories: RowCache[list[MemoryRow]] | None = None,
    ) -> None:
        self.rooms = rooms if rooms is not None else RowCache(CACHED_ROOMS)
        self.memories = memories if memories is not None else RowCache(CACHED_MEMORIES)


class _RollBack(Exception):
    """Carries a cancellation out of a transaction as an error, so that it rolls back."""
