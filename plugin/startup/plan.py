"""Reconciliation's middle step: a pure function from the Matrix view and the cached rows to a
plan of what the database should hold and what Matrix needs repaired. No I/O, so it is tested
without a server; a second run over an unchanged Matrix computes an empty plan.
"""

from __future__ import annotations

import attrs
from attrs import define, field

from ..db.rows import ACTIVE, ARCHIVED, MOVED, RoomRow, UserRow
from ..matrix.binding import BINDING_TYPE, SPACE_TYPE, Binding, SpaceRecord, deterministic_chat_id
from ..matrix.links import is_bot_link
from .discover import MatrixView, RoomView


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
    # Managed rooms that are encrypted: their state and the bot's account data are not.
    encrypted: int = 0

    @property
    def repaired(self) -> int:
        return len(self.child_links) + len(self.parent_links)


def managed_spaces(view: MatrixView) -> dict[str, SpaceRecord]:
    spaces = {}
    for room in view.rooms.values():
        record = SpaceRecord.from_content(room.account_data.get(SPACE_TYPE))
        create = room.content("m.room.create")
        if room.joined and record and create and create.get("type") == "m.space":
            spaces[room.room_id] = record
    return spaces


def compute(
    view: MatrixView,
    db_rooms: dict[str, RoomRow],
    db_users: dict[str, UserRow],
    bot_id: str,
) -> Plan:
    """What the database should hold, and what Matrix needs repaired."""
    plan = Plan()
    spaces = managed_spaces(view)
    plan.spaces = len(spaces)
    seen: set[str] = set()
    for room in view.rooms.values():
        binding = Binding.from_content(room.account_data.get(BINDING_TYPE))
        if binding is None or room.room_id in spaces:
            continue
        seen.add(room.room_id)
        _plan_room(plan, view, room, binding, db_rooms.get(room.room_id), spaces, bot_id)

    # Rows Matrix no longer knows of: the bot's record is gone, so the room is not managed.
    for room_id, old in db_rooms.items():
        if room_id not in seen and old.state == ACTIVE:
            plan.rooms.append(attrs.evolve(old, state=ARCHIVED))
            plan.archived += 1
    _plan_users(plan, spaces, db_users)
    return plan


def _plan_room(
    plan: Plan,
    view: MatrixView,
    room: RoomView,
    binding: Binding,
    old: RoomRow | None,
    spaces: dict[str, SpaceRecord],
    bot_id: str,
) -> None:
    if binding.chat_id is None:
        binding = attrs.evolve(binding, chat_id=deterministic_chat_id(room.room_id))
        plan.binding_writes.append((room.room_id, binding))
        plan.backfilled += 1
    elif old is not None and old.chat_id is None:
        plan.backfilled += 1
    space_id = binding.space_id if binding.space_id in spaces else None
    state, moved_to = ACTIVE, None
    tombstone = room.content("m.room.tombstone")
    if not room.joined:
        state = ARCHIVED
    elif tombstone and isinstance(tombstone.get("replacement_room"), str):
        state, moved_to = MOVED, tombstone["replacement_room"]
        if old is None or old.state != MOVED:
            plan.moves.append((moved_to, binding))
    elif space_id is not None:
        child_ok = is_bot_link(view.rooms[space_id].get("m.space.child", room.room_id), bot_id)
        parent_ok = is_bot_link(room.get("m.space.parent", space_id), bot_id)
        if not child_ok and not parent_ok:
            # Both sides gone: the room was taken out of its Space.
            state = ARCHIVED
        elif not child_ok:
            plan.child_links.append((space_id, room.room_id))
        elif not parent_ok:
            plan.parent_links.append((room.room_id, space_id))
    created = (room.get("m.room.create") or {}).get("origin_server_ts")
    row = RoomRow.new(
        room.room_id,
        attrs.evolve(binding, space_id=space_id),
        str((room.content("m.room.name") or {}).get("name") or ""),
        state=state,
        moved_to=moved_to,
        created_at=old.created_at if old else created,
    )
    if old is not None:
        row.last_event_id, row.last_event_ts = old.last_event_id, old.last_event_ts
    # A rebuild is no change of the plugin's: the row keeps the time of the last one.
    row.updated_at = old.updated_at if old is not None else 0
    if state == ACTIVE:
        plan.managed_rooms += 1
        if room.get("m.room.encryption") is not None:
            plan.encrypted += 1
    if old is None:
        plan.recovered += 1
    elif state == ARCHIVED and old.state != ARCHIVED:
        plan.archived += 1
    if old is None or old.from_matrix() != row.from_matrix():
        plan.rooms.append(row)


def _plan_users(plan: Plan, spaces: dict[str, SpaceRecord], db_users: dict[str, UserRow]) -> None:
    owner_space: dict[str, str] = {}
    for space_id in sorted(spaces):
        owner_space.setdefault(spaces[space_id].owner, space_id)
    owners = set(db_users) | {r.owner for r in plan.rooms} | {s.owner for s in spaces.values()}
    for owner in sorted(owners):
        space_id = owner_space.get(owner)
        old_user = db_users.get(owner)
        if old_user is None or old_user.space_id != space_id:
            plan.users.append((owner, space_id))
