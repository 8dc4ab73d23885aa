"""A bounded cache of rows that the message path reads for every message (its room, its owner's
memory), so that each message costs fewer round trips to the database.

Only reads outside a transaction fill it, and every write to a cached row forgets it (in a
transaction too, which may roll back), so what it holds is what the database committed. A
transaction forgets its rows again once it ends: meanwhile, a read on another connection
(PostgreSQL's pool) may have cached one as it was before the commit.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

V = TypeVar("V")
_MISSING = object()


class RowCache(Generic[V]):
    def __init__(self, size: int) -> None:
        self.size = size
        self._rows: OrderedDict[Hashable, V] = OrderedDict()

    def get(self, key: Hashable) -> V | object:
        """The cached value, or `MISSING`."""
        value = self._rows.get(key, _MISSING)
        if value is not _MISSING:
            self._rows.move_to_end(key)
        return value

    def put(self, key: Hashable, value: V) -> None:
        self._rows[key] = value
        self._rows.move_to_end(key)
        while len(self._rows) > self.size:
            self._rows.popitem(last=False)

    def forget(self, key: Hashable) -> None:
        self._rows.pop(key, None)

    def clear(self) -> None:
        self._rows.clear()


class TransactionCache(RowCache[V]):
    """A cache as one transaction uses it: it keeps the keys that the transaction forgot."""

    def __init__(self, cache: RowCache[V]) -> None:
        super().__init__(cache.size)
        self.cache = cache
        self.forgotten: set[Hashable] = set()

    def get(self, key: Hashable) -> V | object:
        return self.cache.get(key)

    def put(self, key: Hashable, value: V) -> None:
        self.cache.put(key, value)

    def forget(self, key: Hashable) -> None:
        self.forgotten.add(key)
        self.cache.forget(key)

    def clear(self) -> None:
        self.cache.clear()

    @contextmanager
    def open(self) -> Iterator[TransactionCache[V]]:
        try:
            yield self
        finally:
            for key in self.forgotten:
                self.cache.forget(key)


MISSING = _MISSING
