"""A bounded cache of rows that the message path reads for every message (its room, its owner's
memory), so that each message costs fewer round trips to the database.

Only reads outside a transaction fill it, and every write to a cached row forgets it (in a
transaction too, which may roll back), so what it holds is what the database committed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
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

    def __len__(self) -> int:
        return len(self._rows)


MISSING = _MISSING
