"""The plugin's database: a cache of Matrix, plus what exists only here (see migrations)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mautrix.util.async_db import Database

from .tables import (
    Executor,
    MemoryTable,
    MessageTable,
    RoomTable,
    StateTable,
    TurnTable,
    UsageTable,
    UserTable,
)


class Store:
    """The plugin's tables. One per plugin instance; `transaction()` gives one on a connection."""

    def __init__(self, db: Executor) -> None:
        self.db = db
        self.users = UserTable(db)
        self.rooms = RoomTable(db)
        self.turns = TurnTable(db)
        self.memory = MemoryTable(db)
        self.usage = UsageTable(db)
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
        async with self.db.acquire() as conn:
            try:
                async with conn.transaction():
                    try:
                        yield Store(conn)
                    except (Exception, GeneratorExit):
                        raise
                    except BaseException as e:
                        # mautrix rolls back on an Exception only: a cancellation (a stop, a
                        # timeout) would leave SQLite's one connection inside the transaction.
                        interrupted = e
                        raise _RollBack() from e
            except _RollBack:
                assert interrupted is not None
                raise interrupted from None


class _RollBack(Exception):
    """Carries a cancellation out of a transaction as an error, so that it rolls back."""
