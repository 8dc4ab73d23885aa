"""Discovery: one request that shows every room the bot is in, as reconciliation needs it.

Simplified sliding sync (MSC4186) answers a start's question about twice as fast as /sync on
Synapse, and a filtered full-state /sync stays for servers without it. Either gives the state
types that matter, the bot's own room account data, and its pending invites.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field
from maubot.matrix import MaubotMatrixClient
from mautrix.api import Method
from mautrix.errors import MatrixRequestError

from ..matrix.binding import ANSWERED_TYPE, BINDING_TYPE, SPACE_TYPE
from ..matrix.sync import fresh_initial_sync

_STATE_TYPES = [
    "m.room.create",
    "m.room.encryption",
    "m.room.name",
    "m.room.tombstone",
    "m.space.child",
    "m.space.parent",
]
# Discovery asks for no timeline: Synapse answers much faster (measured in bench/reconcile.py).
# Sliding sync lists no rooms the bot has left; their rows are archived as rows that Matrix no
# longer knows of.
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


async def discover(client: MaubotMatrixClient) -> MatrixView:
    try:
        data = await client.api.request(Method.POST, SLIDING_SYNC_PATH, SLIDING_SYNC_BODY)
    except MatrixRequestError as e:
        if e.errcode != "M_UNRECOGNIZED" and e.http_status not in (404, 405):
            raise
        data = await fresh_initial_sync(client, SYNC_FILTER, full_state=True)
        return parse_sync(data, client.mxid)
    return parse_sliding_sync(data, client.mxid)
