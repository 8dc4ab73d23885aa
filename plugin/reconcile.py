"""Startup reconciliation: rebuild the database cache from the bot's record in Matrix.

Three steps, kept apart so that the middle one can be tested without a server:
- discover: one request (simplified sliding sync, or a filtered full-state /sync where the server
  has none) gives every room the bot is in, the state types that matter, the bot's own room
  account data, and its pending invites;
- compute: a pure function from that view and the current DB rows to a plan;
- apply: Matrix repairs first, then the DB changes in one transaction.
A second run over an unchanged Matrix computes an empty plan, so it writes nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from attrs import define, field
from maubot.matrix import MaubotMatrixClient
from mautrix.api import Method
from mautrix.errors import MatrixError, MatrixRequestError, MNotFound
from mautrix.types import EventType
from mautrix.util.logging import TraceLogger

from .db import ACTIVE, ARCHIVED, MOVED, RoomRow, Store, UserRow
from .matrix_state import (
    ANSWERED_TYPE,
    BINDING_TYPE,
    SPACE_TYPE,
    Binding,
    MatrixRecord,
    SpaceRecord,
    deterministic_chat_id,
    fresh_initial_sync,
    link_child,
    link_parent,
)

_STATE_TYPES = [
    "m.room.create",
    "m.room.encryption",
    "m.room.name",
    "m.room.tombstone",
    "m.space.child",
    "m.space.parent",
]
# Discovery asks for no timeline: Synapse answers much faster (measured in bench/reconcile.py).
# Simplified sliding sync (MSC4186) answers a start's question about twice as fast as /sync, and
# /sync stays for servers without it. Sliding sync lists no rooms the bot has left; their rows
# are archived as rows that Matrix no longer knows of.
SLIDING_SYNC_PATH = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
SLIDING_SYNC_BODY = {
    "lists": {
        "all": {
            "ranges": [[0, 2**31 - 1]],
            "required_state": [[type, "*"] for type in _STATE_TYPES],
            "timeline_limit": 0,
        }
    },
    "extensions": {"account_data": {"enabled": True}},
}
SYNC_FILTER = {
    "room": {
        "include_leave": True,
        "timeline": {"limit": 0},
        "state": {"types": _STATE_TYPES, "lazy_load_members": False},
        "account_data": {"types": [BINDING_TYPE, SPACE_TYPE, ANSWERED_TYPE]},
        "ephemeral": {"types": []},
    },
    "presence": {"types": []},
    "account_data": {"types": []},
}


@define
class RoomView:
    room_id: str
    joined: bool
    # (type, state_key) -> the raw state event: tens of thousands of rooms are parsed per run,
    # so no object is made per event.
    state: dict[tuple[str, str], dict[str, Any]] = field(factory=dict)
    account_data: dict[str, dict[str, Any]] = field(factory=dict)

    def get(self, type: str, state_key: str = "") -> dict[str, Any] | None:
        return self.state.get((type, state_key))

    def content(self, type: str, state_key: str = "") -> dict[str, Any] | None:
        event = self.state.get((type, state_key))
        return event.get("content") or {} if event is not None else None


@define
class InviteView:
    room_id: str
    inviter: str
    is_direct: bool
    encrypted: bool


@define
class MatrixView:
    rooms: dict[str, RoomView] = field(factory=dict)
    invites: list[InviteView] = field(factory=list)

    def unanswered_joins(self, bot_id: str) -> list[RoomView]:
        """Rooms someone else made that the bot joined without answering the invite.

        maubot's autojoin does that for invites that arrive while the plugin is stopped, and
        then they are no longer in the sync's invite section.
        """
        return [
            room
            for room in self.rooms.values()
            if room.joined
            and (room.get("m.room.create") or {}).get("sender") not in (None, bot_id)
            and not room.account_data.keys() & {BINDING_TYPE, SPACE_TYPE, ANSWERED_TYPE}
        ]


def _room_view(
    room_id: str,
    joined: bool,
    state: list[dict[str, Any]],
    account_data: list[dict[str, Any]],
) -> RoomView:
    """Later state events win, so a /sync timeline applies on top of its state section."""
    room = RoomView(room_id, joined)
    for ev in state:
        if "state_key" in ev and ev.get("type") in _STATE_TYPES:
            room.state[(ev["type"], ev["state_key"])] = ev
    for ev in account_data:
        room.account_data[ev.get("type", "")] = ev.get("content") or {}
    return room


def _invite_view(room_id: str, stripped: list[dict[str, Any]], bot_id: str) -> InviteView | None:
    own = next(
        (e for e in stripped if e.get("type") == "m.room.member" and e.get("state_key") == bot_id),
        None,
    )
    if own is None:
        return None
    return InviteView(
        room_id=room_id,
        inviter=own.get("sender", ""),
        is_direct=bool((own.get("content") or {}).get("is_direct")),
        encrypted=any(e.get("type") == "m.room.encryption" for e in stripped),
    )


def parse_sync(data: dict[str, Any], bot_id: str) -> MatrixView:
    view = MatrixView()
    rooms = data.get("rooms") or {}
    for section, joined in (("join", True), ("leave", False)):
        for room_id, room in (rooms.get(section) or {}).items():
            state = (room.get("state") or {}).get("events") or []
            timeline = (room.get("timeline") or {}).get("events") or []
            account_data = (room.get("account_data") or {}).get("events") or []
            view.rooms[room_id] = _room_view(room_id, joined, [*state, *timeline], account_data)
    for room_id, room in (rooms.get("invite") or {}).items():
        invite = _invite_view(room_id, (room.get("invite_state") or {}).get("events") or [], bot_id)
        if invite is not None:
            view.invites.append(invite)
    return view


def parse_sliding_sync(data: dict[str, Any], bot_id: str) -> MatrixView:
    view = MatrixView()
    account_data = ((data.get("extensions") or {}).get("account_data") or {}).get("rooms") or {}
    for room_id, room in (data.get("rooms") or {}).items():
        if "invite_state" in room:
            invite = _invite_view(room_id, room["invite_state"] or [], bot_id)
            if invite is not None:
                view.invites.append(invite)
            continue
        view.rooms[room_id] = _room_view(
            room_id, True, room.get("required_state") or [], account_data.get(room_id) or []
        )
    return view


@define
class Plan:
    rooms: list[RoomRow] = field(factory=list)
    users: list[tuple[str, str | None]] = field(factory=list)
    binding_writes: list[tuple[str, Binding]] = field(factory=list)
    child_links: list[tuple[str, str]] = field(factory=list)
    parent_links: list[tuple[str, str]] = field(factory=list)
    # (replacement room, the binding it takes over)
    moves: list[tuple[str, Binding]] = field(factory=list)
    recovered: int = 0
    backfilled: int = 0
    archived: int = 0
    spaces: int = 0
    managed_rooms: int = 0

    @property
    def repaired(self) -> int:
        return len(self.child_links) + len(self.parent_links)


def _link_ok(event: dict[str, Any] | None, bot_id: str) -> bool:
    """A Space link counts only if the bot sent it, and it is not a removed (empty) link."""
    return bool(event and event.get("sender") == bot_id and (event.get("content") or {}).get("via"))


def _managed_spaces(view: MatrixView) -> dict[str, SpaceRecord]:
    spaces = {}
    for room in view.rooms.values():
        record = SpaceRecord.from_content(room.account_data.get(SPACE_TYPE))
        create = room.content("m.room.create")
        if room.joined and record and create and create.get("type") == "m.space":
            spaces[room.room_id] = record
    return spaces


# Cursors and creation time are local bookkeeping, not part of what Matrix says.
_FROM_MATRIX = tuple(
    f.name
    for f in attrs.fields(RoomRow)
    if f.name not in ("last_event_id", "last_event_ts", "created_at")
)


def _comparable(row: RoomRow) -> tuple[Any, ...]:
    return tuple(getattr(row, name) for name in _FROM_MATRIX)


def compute(
    view: MatrixView,
    db_rooms: dict[str, RoomRow],
    db_users: dict[str, UserRow],
    bot_id: str,
) -> Plan:
    """What the database should hold, and what Matrix needs repaired. Pure: no I/O."""
    plan = Plan()
    spaces = _managed_spaces(view)
    plan.spaces = len(spaces)
    owner_space: dict[str, str] = {}
    for space_id in sorted(spaces):
        owner_space.setdefault(spaces[space_id].owner, space_id)

    seen: set[str] = set()
    for room in view.rooms.values():
        raw = room.account_data.get(BINDING_TYPE)
        binding = Binding.from_content(raw)
        if binding is None or room.room_id in spaces:
            continue
        seen.add(room.room_id)
        old = db_rooms.get(room.room_id)
        if binding.chat_id is None:
            binding = attrs.evolve(binding, chat_id=deterministic_chat_id(room.room_id))
            plan.binding_writes.append((room.room_id, binding))
            plan.backfilled += 1
        elif old is not None and old.chat_id is None:
            plan.backfilled += 1
        title = str((room.content("m.room.name") or {}).get("name") or "")
        create = room.get("m.room.create")
        state, moved_to = ACTIVE, None
        space_id = binding.space_id if binding.space_id in spaces else None
        tombstone = room.content("m.room.tombstone")
        if not room.joined:
            state = ARCHIVED
        elif tombstone and isinstance(tombstone.get("replacement_room"), str):
            state, moved_to = MOVED, tombstone["replacement_room"]
            if old is None or old.state != MOVED:
                plan.moves.append((moved_to, binding))
        elif space_id is not None:
            child_ok = _link_ok(view.rooms[space_id].get("m.space.child", room.room_id), bot_id)
            parent_ok = _link_ok(room.get("m.space.parent", space_id), bot_id)
            if not child_ok and not parent_ok:
                # Both sides gone: the room was taken out of its Space.
                state = ARCHIVED
            elif not child_ok:
                plan.child_links.append((space_id, room.room_id))
            elif not parent_ok:
                plan.parent_links.append((room.room_id, space_id))
        row = binding.room_row(
            room.room_id,
            title,
            space_id=space_id,
            state=state,
            moved_to=moved_to,
            created_at=old.created_at if old else (create or {}).get("origin_server_ts"),
        )
        if old is not None:
            row.last_event_id, row.last_event_ts = old.last_event_id, old.last_event_ts
        if state == ACTIVE:
            plan.managed_rooms += 1
        if old is None:
            plan.recovered += 1
        elif state == ARCHIVED and old.state != ARCHIVED:
            plan.archived += 1
        if old is None or _comparable(old) != _comparable(row):
            plan.rooms.append(row)

    # Rows Matrix no longer knows of: the bot's record is gone, so the room is not managed.
    for room_id, old in db_rooms.items():
        if room_id not in seen and old.state == ACTIVE:
            plan.rooms.append(attrs.evolve(old, state=ARCHIVED))
            plan.archived += 1

    owners = set(db_users) | {r.owner for r in plan.rooms} | {s.owner for s in spaces.values()}
    for owner in sorted(owners):
        space_id = owner_space.get(owner)
        old_user = db_users.get(owner)
        if old_user is None or old_user.space_id != space_id:
            plan.users.append((owner, space_id))
    return plan


@define
class ReconcileReport:
    spaces: int = 0
    rooms: int = 0
    recovered: int = 0
    backfilled: int = 0
    repaired: int = 0
    archived: int = 0
    errors: int = 0
    duration: float = 0.0
    finished: bool = False

    def summary(self) -> str:
        status = "" if self.finished else " (still running in the background)"
        return (
            f"reconciliation: spaces={self.spaces} rooms={self.rooms} "
            f"recovered={self.recovered} backfilled={self.backfilled} "
            f"repaired={self.repaired} archived={self.archived} errors={self.errors} "
            f"duration={self.duration:.2f}s{status}"
        )

    def counts(self) -> dict[str, int]:
        return {k: v for k, v in attrs.asdict(self).items() if k not in ("duration", "finished")}


# (room_id, inviter, is_direct, encrypted): the same handler as for live invites.
InviteHandler = Callable[[str, str, bool, bool], Awaitable[None]]


class Reconciler:
    def __init__(
        self,
        client: MaubotMatrixClient,
        store: Store,
        record: MatrixRecord,
        log: TraceLogger,
        on_invite: InviteHandler,
    ) -> None:
        self.client = client
        self.store = store
        self.record = record
        self.log = log
        self.on_invite = on_invite
        self._lock = asyncio.Lock()

    @property
    def server_name(self) -> str:
        return self.client.mxid.split(":", 1)[1]

    async def discover(self) -> MatrixView:
        try:
            data = await self.client.api.request(Method.POST, SLIDING_SYNC_PATH, SLIDING_SYNC_BODY)
        except MatrixRequestError as e:
            if e.errcode != "M_UNRECOGNIZED" and e.http_status not in (404, 405):
                raise
            self.log.debug(f"No sliding sync ({e}); discovering with /sync")
            data = await fresh_initial_sync(self.client, SYNC_FILTER, full_state=True)
            return parse_sync(data, self.client.mxid)
        return parse_sliding_sync(data, self.client.mxid)

    async def run(self) -> ReconcileReport:
        async with self._lock:
            started = time.monotonic()
            report = ReconcileReport()
            view = await self.discover()
            db_rooms = {r.room_id: r for r in await self.store.all_rooms()}
            db_users = {u.user_id: u for u in await self.store.all_users()}
            plan = compute(view, db_rooms, db_users, self.client.mxid)
            report.errors += await self._repair_matrix(plan)
            await self.store.apply_reconciliation(plan.rooms, plan.users)
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

    async def _repair_matrix(self, plan: Plan) -> int:
        errors = 0
        via = self.server_name
        for room_id, binding in plan.binding_writes:
            errors += await self._guarded(
                f"writing the binding of {room_id}", self.record.write_binding(room_id, binding)
            )
        for space_id, room_id in plan.child_links:
            errors += await self._guarded(
                f"restoring the child link {space_id} -> {room_id}",
                link_child(self.client, space_id, room_id, via),
            )
        for room_id, space_id in plan.parent_links:
            errors += await self._guarded(
                f"restoring the parent link {room_id} -> {space_id}",
                link_parent(self.client, room_id, space_id, via),
            )
        for new_room, binding in plan.moves:
            errors += await self._guarded(
                f"following the move to {new_room}", self._follow(new_room, binding, plan)
            )
        return errors

    async def _follow(self, new_room: str, binding: Binding, plan: Plan) -> None:
        """Follows a tombstone when the bot can join the replacement room."""
        await self.client.join_room_by_id(new_room)
        await self.record.write_binding(new_room, binding)
        try:
            name = await self.client.get_state_event(new_room, EventType.ROOM_NAME)
            title = name.name or ""
        except MNotFound:
            title = ""
        if binding.space_id:
            await link_child(self.client, binding.space_id, new_room, self.server_name)
            await link_parent(self.client, new_room, binding.space_id, self.server_name)
        plan.rooms.append(binding.room_row(new_room, title, space_id=binding.space_id))
        plan.recovered += 1
