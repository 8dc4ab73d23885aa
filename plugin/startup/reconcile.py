"""Startup reconciliation: rebuild the database cache from the bot's record in Matrix.

Three steps: discover (one request, see `discover`), compute (a pure plan, see `plan`), apply:
Matrix repairs first, then the database changes in one transaction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial

import attrs
from attrs import define, field
from maubot.matrix import MaubotMatrixClient
from mautrix.errors import MatrixError, MNotFound
from mautrix.types import EventType
from mautrix.util.logging import TraceLogger

from ..db import Store
from ..db.rows import RoomRow, now_ms
from ..matrix.binding import Binding
from ..matrix.links import SpaceLinks
from ..matrix.record import MatrixRecord
from .discover import InviteView, RoomView, discover
from .plan import Plan, compute


@define
class ReconcileReport:
    spaces: int = 0
    rooms: int = 0
    recovered: int = 0
    backfilled: int = 0
    repaired: int = 0
    archived: int = 0
    errors: int = 0
    encrypted: int = 0
    duration: float = 0.0
    finished: bool = False
    # Whether the client can decrypt: without, the encrypted rooms are rebuilt but unreadable.
    crypto: bool = True

    def summary(self) -> str:
        status = "" if self.finished else " (still running in the background)"
        unreadable = ""
        if self.encrypted and not self.crypto:
            unreadable = " (unreadable: this maubot client has no encryption support)"
        return (
            f"reconciliation: spaces={self.spaces} rooms={self.rooms} "
            f"recovered={self.recovered} backfilled={self.backfilled} "
            f"repaired={self.repaired} archived={self.archived} errors={self.errors} "
            f"encrypted={self.encrypted}{unreadable} duration={self.duration:.2f}s{status}"
        )

    def counts(self) -> dict[str, int]:
        skipped = ("duration", "finished", "crypto")
        return {k: v for k, v in attrs.asdict(self).items() if k not in skipped}


# (room_id, inviter, is_direct, encrypted): the same handler as for live invites.
InviteHandler = Callable[[str, str, bool, bool], Awaitable[None]]


@define(eq=False)
class Reconciler:
    client: MaubotMatrixClient
    store: Store
    record: MatrixRecord
    links: SpaceLinks
    log: TraceLogger
    on_invite: InviteHandler
    _lock: asyncio.Lock = field(init=False, factory=asyncio.Lock)

    async def run(self) -> ReconcileReport:
        async with self._lock:
            started = time.monotonic()
            # What the plugin changes after this moment is newer than the view: when this runs
            # while the bot is live, those changes are kept, not reverted.
            since = now_ms()
            report = ReconcileReport(crypto=self.client.crypto is not None)
            view = await discover(self.client)
            db_rooms = {r.room_id: r for r in await self.store.rooms.all()}
            db_users = {u.user_id: u for u in await self.store.users.all()}
            plan = compute(view, db_rooms, db_users, self.client.mxid)
            report.errors += await self._repair_matrix(plan, since)
            if plan.rooms or plan.users:
                async with self.store.transaction() as tx:
                    await tx.rooms.upsert_unchanged_since(plan.rooms, since)
                    await tx.users.upsert_unchanged_since(plan.users, since)
            invites = view.invites + [
                await self._joined_invite(room) for room in view.unanswered_joins(self.client.mxid)
            ]
            for invite in invites:
                report.errors += await self._guarded(
                    f"handling the invite to {invite.room_id}",
                    self.on_invite(
                        invite.room_id, invite.inviter, invite.is_direct, invite.encrypted
                    ),
                )
            report.spaces = plan.spaces
            report.rooms = plan.managed_rooms
            report.recovered = plan.recovered
            report.backfilled = plan.backfilled
            report.repaired = plan.repaired
            report.archived = plan.archived
            report.encrypted = plan.encrypted
            report.duration = time.monotonic() - started
            report.finished = True
            return report

    async def _joined_invite(self, room: RoomView) -> InviteView:
        """The invite behind a room the bot already joined. Without it in the room's history,
        the room's creator stands for the inviter."""
        creator = str((room.get("m.room.create") or {}).get("sender"))
        encrypted = room.get("m.room.encryption") is not None
        try:
            invite = await self.record.find_invite(room.room_id)
        except MatrixError as e:
            self.log.warning(f"Could not read the invite into {room.room_id}: {e}")
            invite = None
        if invite is None:
            return InviteView(room.room_id, creator, is_direct=False, encrypted=encrypted)
        is_direct = bool(invite.content.is_direct)
        return InviteView(room.room_id, invite.sender, is_direct=is_direct, encrypted=encrypted)

    async def _guarded(self, what: str, step: Awaitable[None]) -> int:
        """Runs one step; a room that errors must not stop the others. Returns errors."""
        self.log.info(f"Reconciliation: {what}")
        try:
            await step
        except Exception as e:
            self.log.warning(f"Reconciliation failed {what}: {e}")
            return 1
        return 0

    async def _changed_since(self, room_id: str, since: int) -> bool:
        room = await self.store.rooms.get(room_id)
        return room is not None and room.updated_at > since

    async def _repair_matrix(self, plan: Plan, since: int) -> int:
        # (room, what, the repair): each skipped when the plugin changed the room meanwhile.
        repairs: list[tuple[str, str, Callable[[], Awaitable[None]]]] = [
            *(
                (
                    room_id,
                    f"writing the binding of {room_id}",
                    partial(self.record.write_binding, room_id, binding),
                )
                for room_id, binding in plan.binding_writes
            ),
            *(
                (
                    room_id,
                    f"restoring the child link {space_id} -> {room_id}",
                    partial(self.links.link_child, space_id, room_id),
                )
                for space_id, room_id in plan.child_links
            ),
            *(
                (
                    room_id,
                    f"restoring the parent link {room_id} -> {space_id}",
                    partial(self.links.link_parent, room_id, space_id),
                )
                for room_id, space_id in plan.parent_links
            ),
        ]
        errors = 0
        for room_id, what, repair in repairs:
            if not await self._changed_since(room_id, since):
                errors += await self._guarded(what, repair())
        for new_room, binding in plan.moves:
            errors += await self._guarded(
                f"following the move to {new_room}", self._follow(new_room, binding, plan)
            )
        return errors

    async def _follow(self, new_room: str, binding: Binding, plan: Plan) -> None:
        """Follows a tombstone when the bot can join the replacement room."""
        if await self.record.read_binding(new_room) is not None:
            # Followed before (the database was wiped since): the replacement room is bound and
            # may have changed since; the rebuild reads it like any other room.
            return
        await self.client.join_room_by_id(new_room)
        await self.record.write_binding(new_room, binding)
        try:
            name = await self.client.get_state_event(new_room, EventType.ROOM_NAME)
            title = name.name or ""
        except MNotFound:
            title = ""
        if binding.space_id:
            await self.links.link(binding.space_id, new_room)
        plan.rooms.append(RoomRow.new(new_room, binding, title))
        plan.recovered += 1
