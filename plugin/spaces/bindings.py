"""The one way to create or change a working room's binding: Matrix first, then the database.

If the database write fails after Matrix took the change, the next reconciliation makes the
database agree with Matrix.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from attrs import define, field

from ..db import Store
from ..db.rows import RoomRow
from ..matrix.binding import Binding
from ..matrix.record import MatrixRecord
from ..ops.locks import KeyedLocks

# Further DB writes that belong with the change, run in its transaction.
AlsoInDb = Callable[[Store], Awaitable[None]]
MatrixSteps = Callable[[], Awaitable[None]]


@define(eq=False)
class Bindings:
    record: MatrixRecord
    store: Store
    # One change at a time per room, each on the binding as the one before left it: a change
    # made from a row read long ago (a compaction waits for its agent) keeps the others.
    _locks: KeyedLocks = field(init=False, factory=KeyedLocks)

    async def create(self, room: RoomRow, then_in_matrix: MatrixSteps | None = None) -> None:
        """Binds a new room: its account data, the further Matrix steps, then its row."""
        await self.record.write_binding(room.room_id, room.binding)
        if then_in_matrix is not None:
            await then_in_matrix()
        await self.store.rooms.upsert(room)

    async def change(self, room: RoomRow, also: AlsoInDb | None = None, **fields: Any) -> RoomRow:
        """Changes binding fields of a room and returns its updated row."""
        async with self._locks.hold(room.room_id):
            room = await self.store.rooms.get(room.room_id) or room
            binding: Binding = attrs.evolve(room.binding, **fields)
            await self.record.write_binding(room.room_id, binding)
            async with self.store.transaction() as tx:
                await tx.rooms.set_binding(room.room_id, binding)
                if also is not None:
                    await also(tx)
            return room.with_binding(binding)
