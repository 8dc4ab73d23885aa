"""Group commit: writes that can wait a moment are committed together, in one transaction.

Under load, each message would otherwise cost the plugin's one SQLite connection a transaction
of its own at every step. Here the writes queued while a transaction runs go into the next one,
in the order they were queued: a crash loses a suffix of them, never a write without the ones
before it, which is what the delivery state relies on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from logging import Logger

from . import Store

Write = Callable[[Store], Awaitable[None]]


class GroupCommit:
    def __init__(self, store: Store, log: Logger) -> None:
        self.store = store
        self.log = log
        self._pending: list[tuple[Write, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    def add(self, write: Write) -> asyncio.Future[None]:
        """Queues a write; the future completes once it is committed (or raises its error)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((write, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return done

    async def write(self, write: Write) -> None:
        """Queues a write and waits until it is committed."""
        await self.add(write)

    async def drain(self) -> None:
        """Waits until everything queued so far is committed."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                async with self.store.transaction() as tx:
                    for write, _ in batch:
                        await write(tx)
            except Exception:
                # One bad write must not take the others down: each is tried on its own.
                self.log.exception("A group commit failed; writing its parts one by one")
                await self._one_by_one(batch)
                continue
            except BaseException:
                # Stopped: nobody waits for these writes forever.
                for _, done in [*batch, *self._pending]:
                    done.cancel()
                self._pending = []
                raise
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    async def _one_by_one(self, batch: list[tuple[Write, asyncio.Future[None]]]) -> None:
        for write, done in batch:
            try:
                async with self.store.transaction() as tx:
                    await write(tx)
            except Exception as e:
                if not done.done():
                    done.set_exception(e)
            else:
                if not done.done():
                    done.set_result(None)
