"""The one fake Matrix client of the unit tests and the in-process benchmarks.

It models a homeserver in memory: rooms with state, members and a timeline, the bot's room
account data, and the requests that the plugin makes itself (the outbox's sends, /sync, sliding
sync, /messages). Failures are injected by call name (`fail`), and a rate limit that names its
wait like Synapse's (`rate_limited`, `retry_after_ms`).

The timeline (`history`) holds what users sent (`message`, `encrypted_message`) and what the
bot sent through the outbox, so that the catch-up reads back what a homeserver would show it.

`FakeCrypto` stands in for the OlmMachine of a maubot with crypto (`crypto = FakeCrypto()`): the
"ciphertext" of an encrypted event is its plain event as JSON, readable only once the session's
key has arrived (`share`), which for the bot's own session is from the start.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import unquote

from attrs import define, field
from mautrix.api import Method, PathBuilder
from mautrix.client import SyncStream
from mautrix.errors import (
    MatrixRequestError,
    MForbidden,
    MNotFound,
    MUnrecognized,
    SessionNotFound,
)
from mautrix.types import (
    EncryptedEvent,
    Event,
    EventType,
    Member,
    Membership,
    MessageEvent,
    PaginatedMessages,
    ReactionEvent,
    RoomNameStateEventContent,
)
from yarl import URL

from plugin.matrix.outbox import RateLimited
from plugin.startup.discover import SLIDING_SYNC_PATH

BOT = "@bot:example.org"
ALICE = "@alice:example.org"
MEGOLM = "m.megolm.v1.aes-sha2"
# The session the bot encrypts with; users' sessions are named by the tests.
BOT_SESSION = "bot-session"
_ids = itertools.count()


def now_ms() -> int:
    return int(time.time() * 1000)


def _of_types(events: list[dict[str, Any]], filter_json: Any) -> list[dict[str, Any]]:
    """The events a /messages or /sync filter's `types` lets through."""
    if isinstance(filter_json, str):
        filter_json = json.loads(filter_json)
    types = (filter_json or {}).get("types")
    return [e for e in events if types is None or e.get("type") in types]


@define
class Sent:
    room_id: str
    event_id: str
    content: dict[str, Any]
    type: str = "m.room.message"


@define
class FakeRoom:
    create: dict[str, Any] = field(factory=dict)
    state: dict[tuple[str, str], dict[str, Any]] = field(factory=dict)
    members: dict[str, str] = field(factory=dict)


class FakeCryptoStore:
    """The part of mautrix's crypto store that the plugin reads."""

    def __init__(self, crypto: FakeCrypto) -> None:
        self.crypto = crypto

    async def has_group_session(self, room_id: str, session_id: str) -> bool:
        return session_id in self.crypto.sessions

    async def get_group_session(self, room_id: str, session_id: str) -> Any:
        received = self.crypto.sessions.get(session_id)
        return None if received is None else _Session(received)

    async def get_devices(self, user_id: str) -> dict[str, Any]:
        return {"PHONE": object(), "LAPTOP": object()}


@define
class _Session:
    received_at: datetime


class FakeCrypto:
    """The OlmMachine of a client with crypto: decrypts the fake's encrypted events once their
    session's key is here, waits for keys, and records the key requests (`answer_requests_in`
    makes a requested key arrive that much later)."""

    def __init__(self) -> None:
        # Session id -> when its key arrived (naive UTC, as mautrix keeps it).
        self.sessions: dict[str, datetime] = {BOT_SESSION: datetime.utcnow() - timedelta(days=1)}
        self.crypto_store = FakeCryptoStore(self)
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self.answer_requests_in: float | None = None
        # Event ids in the order they were decrypted (a walk's cost).
        self.decrypted: list[str] = []
        self._arrived: dict[str, asyncio.Event] = {}

    def share(self, session_id: str, age: float = 0.0) -> None:
        """The session's key arrives (`age` seconds ago)."""
        self.sessions[session_id] = datetime.utcnow() - timedelta(seconds=age)
        self._arrived.setdefault(session_id, asyncio.Event()).set()

    async def decrypt_megolm_event(self, evt: EncryptedEvent) -> Event:
        self.decrypted.append(evt.event_id)
        content = evt.content.serialize()
        if content["session_id"] not in self.sessions:
            raise SessionNotFound(content["session_id"])
        plain = json.loads(content["ciphertext"])
        if "m.relates_to" in content and "m.relates_to" not in plain["content"]:
            plain["content"]["m.relates_to"] = content["m.relates_to"]
        return Event.deserialize(
            {
                "room_id": evt.room_id,
                "event_id": evt.event_id,
                "sender": evt.sender,
                "origin_server_ts": evt.timestamp,
                **plain,
            }
        )

    async def wait_for_session(self, room_id: str, session_id: str, timeout: float = 3) -> bool:
        arrived = self._arrived.setdefault(session_id, asyncio.Event())
        try:
            await asyncio.wait_for(arrived.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        return session_id in self.sessions

    async def request_room_key(
        self,
        room_id: str,
        sender_key: str | None,
        session_id: str,
        from_devices: dict[str, list[str]],
        timeout: float | None = None,
    ) -> bool:
        self.requests.append((room_id, session_id, from_devices))
        if self.answer_requests_in is not None:
            loop = asyncio.get_running_loop()
            loop.call_later(self.answer_requests_in, self.share, session_id)
        return False


def encrypted_content(
    event_type: str, content: dict[str, Any], session_id: str, device_id: str = "PHONE"
) -> dict[str, Any]:
    """m.room.encrypted content as a client sends it; the relation stays in the clear."""
    encrypted = {
        "algorithm": MEGOLM,
        "ciphertext": json.dumps({"type": event_type, "content": content}),
        "session_id": session_id,
        "sender_key": f"key-of-{device_id}",
        "device_id": device_id,
    }
    if "m.relates_to" in content:
        encrypted["m.relates_to"] = content["m.relates_to"]
    return encrypted


class FakeStateStore:
    """Whether a room is encrypted: unknown here, so that the client asks the room's state."""

    async def is_encrypted(self, room_id: str) -> bool | None:
        return None


class FakeMediaBody:
    """The body of a media download, as aiohttp's StreamReader hands it out."""

    def __init__(self, fake: FakeMatrix, data: bytes) -> None:
        self.fake = fake
        self.data = data

    async def iter_chunked(self, size: int) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), size):
            chunk = self.data[start : start + size]
            self.fake.media_streamed += len(chunk)
            yield chunk


@define
class FakeMediaResponse:
    status: int
    content_length: int | None
    content: FakeMediaBody


class FakeMediaSession:
    """The client's HTTP session, for media downloads: serves `FakeMatrix.media` on the
    authenticated (v1) path and the legacy (v3) one."""

    def __init__(self, fake: FakeMatrix) -> None:
        self.fake = fake

    @asynccontextmanager
    async def get(self, url: Any, **kwargs: Any) -> AsyncIterator[FakeMediaResponse]:
        path = unquote(str(url.path))
        fake = self.fake
        fake.downloads.append(path)
        v1 = "/_matrix/client/v1/media/download/" in path
        server, media_id = path.rsplit("/", 2)[-2:]
        data = fake.media.get(f"mxc://{server}/{media_id}")
        status = 200
        if v1 and not fake.authenticated_media:
            status, data = 404, b""
        elif fake.fail.get("download", 0) > 0:
            fake.fail["download"] -= 1
            status, data = 502, b""
        elif data is None:
            status, data = 404, b""
        declared = len(data) if fake.declare_media_size else None
        yield FakeMediaResponse(status, declared, FakeMediaBody(fake, data))


class FakeApi:
    """The client's `api`: the plugin's own requests for /sync, sliding sync and /messages, and
    its HTTP session, URL and token for media downloads."""

    def __init__(self, fake: FakeMatrix) -> None:
        self.fake = fake
        self.paths: list[str] = []
        self.base_url = URL("https://hs.example.org")
        self.token = "fake-token"
        self.session = FakeMediaSession(fake)

    def get_txn_id(self) -> str:
        return f"txn{next(_ids)}"

    async def request(self, method: Any, path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.paths.append(str(path))
        return await self.fake.api_request(str(path), kwargs.get("query_params") or {})


class FakeMatrix:
    def __init__(self, mxid: str = BOT) -> None:
        self.mxid = mxid
        # Anything but None stands for a client that can encrypt (`encrypt` below).
        self.crypto: Any = None
        self.state_store = FakeStateStore()
        # maubot's client setting, read by the events it wraps (MaubotMessageEvent).
        self.disable_replies = False
        self.api = FakeApi(self)
        self.rooms: dict[str, FakeRoom] = {}
        self.account_data: dict[tuple[str, str], dict[str, Any]] = {}
        self.sent: list[Sent] = []
        self.typing: list[tuple[str, int]] = []
        # Call name -> how many of the next such calls fail. A name with its target after a colon
        # fails only the calls on that target: "state:m.space.child:!b:example.org" (state key),
        # "send:!room:example.org", "account_data:org.agentspaces.room:!room:example.org" (room).
        self.fail: dict[str, int] = {}
        self.calls: list[str] = []
        # The paths of the requests that the outbox made, rate-limited ones included.
        self.requests: list[str] = []
        # Each send first raises this many M_LIMIT_EXCEEDED errors, with this retry_after_ms.
        self.rate_limited = 0
        self.retry_after_ms: int | None = None
        self.rate_limit_hits = 0
        self.send_delay = 0.0
        self.create_delay = 0.0
        # What /sync answers; sliding sync answers the same rooms in its shape when `sliding`.
        self.sync_data: dict[str, Any] = {"rooms": {}}
        self.sliding = True
        # The room versions the homeserver offers, its default last (Synapse 1.163: up to 12).
        self.room_versions = ["10", "11", "12"]
        # Room id -> raw events of its timeline, newest first (as /messages pages backwards).
        self.history: dict[str, list[dict[str, Any]]] = {}
        # What the client dispatched to event handlers itself, where it goes on to, and the
        # handlers' tasks.
        self.dispatched: list[Event] = []
        self.on_dispatch: Callable[[Event], Awaitable[None]] | None = None
        self.handler_tasks: list[asyncio.Task[None]] = []
        # The media repository: mxc -> bytes, uploads (the bot's) and downloads (paths).
        self.media: dict[str, bytes] = {}
        self.uploads: list[tuple[str, str | None, str | None]] = []
        self.downloads: list[str] = []
        # Whether the homeserver serves /_matrix/client/v1/media (Matrix 1.11), and sends a
        # Content-Length with a download; bytes handed out to downloads so far.
        self.authenticated_media = True
        self.declare_media_size = True
        self.media_streamed = 0

    # Failure injection

    def _call(self, name: str, target: str = "") -> None:
        self.calls.append(name)
        for key in (f"{name}:{target}", name) if target else (name,):
            if self.fail.get(key, 0) > 0:
                self.fail[key] -= 1
                raise MatrixRequestError(f"{name} broke")

    # The timeline

    def add_to_history(self, room_id: str, event: dict[str, Any]) -> None:
        """Puts an event into a room's timeline, newest first, by its timestamp."""
        events = self.history.setdefault(room_id, [])
        ts = event.get("origin_server_ts", 0)
        index = next((i for i, e in enumerate(events) if e.get("origin_server_ts", 0) <= ts), None)
        events.insert(len(events) if index is None else index, event)

    def add_event(
        self,
        room_id: str,
        event_type: str,
        content: dict[str, Any],
        sender: str = ALICE,
        *,
        age: float = 0.0,
        event_id: str | None = None,
    ) -> dict[str, Any]:
        """An event that `sender` sent `age` seconds ago, put into the room's timeline."""
        event = {
            "type": event_type,
            "room_id": room_id,
            "event_id": event_id or f"$user{next(_ids)}",
            "sender": sender,
            "origin_server_ts": now_ms() - int(age * 1000),
            "content": content,
        }
        self.add_to_history(room_id, event)
        return event

    def message(
        self,
        room_id: str,
        body: str,
        sender: str = ALICE,
        *,
        msgtype: str = "m.text",
        relates_to: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        age: float = 0.0,
        event_id: str | None = None,
    ) -> MessageEvent:
        """A message that `sender` sent `age` seconds ago: in the room's timeline, and as the
        event that maubot hands the plugin. `extra` adds content keys (`m.new_content`, ...)."""
        content: dict[str, Any] = {"msgtype": msgtype, "body": body, **(extra or {})}
        if relates_to:
            content["m.relates_to"] = relates_to
        event = self.add_event(
            room_id, "m.room.message", content, sender, age=age, event_id=event_id
        )
        return MessageEvent.deserialize(event)

    def encrypted_message(
        self,
        room_id: str,
        body: str,
        sender: str = ALICE,
        *,
        session_id: str = "alice-session",
        relates_to: dict[str, Any] | None = None,
        age: float = 0.0,
    ) -> EncryptedEvent:
        """`message`, as a client sends it in an encrypted room: an m.room.encrypted event in
        `session_id` (see `FakeCrypto.share`), and the encrypted event maubot hands the plugin."""
        content: dict[str, Any] = {"msgtype": "m.text", "body": body}
        if relates_to:
            content["m.relates_to"] = relates_to
        encrypted = encrypted_content("m.room.message", content, session_id)
        event = self.add_event(room_id, "m.room.encrypted", encrypted, sender, age=age)
        evt = EncryptedEvent.deserialize(event)
        evt.source = SyncStream.JOINED_ROOM | SyncStream.TIMELINE
        return evt

    def encrypt_room(self, room_id: str) -> None:
        """Makes the room encrypted, as its m.room.encryption state does."""
        self.rooms.setdefault(room_id, FakeRoom(members={self.mxid: "join"}))
        self.rooms[room_id].state[("m.room.encryption", "")] = {"algorithm": MEGOLM}

    def dispatch_event(self, event: Event, source: SyncStream) -> list[asyncio.Task]:
        """What maubot's client does with an event: hand it to every handler."""
        self.dispatched.append(event)
        if self.on_dispatch is None:
            return []
        task = asyncio.ensure_future(self.on_dispatch(event))
        self.handler_tasks.append(task)
        return [task]

    def add_media(self, data: bytes) -> str:
        """A file a user uploaded: its mxc URI."""
        mxc = f"mxc://example.org/m{next(_ids)}"
        self.media[mxc] = bytes(data)
        return mxc

    def media_message(
        self,
        room_id: str,
        data: bytes,
        name: str,
        mimetype: str,
        msgtype: str = "m.image",
        caption: str = "",
        **kwargs: Any,
    ) -> MessageEvent:
        """A file a user uploaded and sent: `caption` is the body (MSC2530) if given; `extra`
        and the other keywords as `message` takes them."""
        content: dict[str, Any] = {
            "url": self.add_media(data),
            "filename": name,
            "info": {"mimetype": mimetype, "size": len(data)},
            **kwargs.pop("extra", {}),
        }
        return self.message(room_id, caption or name, msgtype=msgtype, extra=content, **kwargs)

    # The client calls the plugin makes

    async def upload_media(
        self,
        data: bytes | bytearray,
        mime_type: str | None = None,
        filename: str | None = None,
        size: int | None = None,
    ) -> str:
        self._call("upload_media")
        mxc = self.add_media(data)
        self.uploads.append((mxc, mime_type, filename))
        return mxc

    async def create_room(self, **kwargs: Any) -> str:
        self._call("create_room")
        await asyncio.sleep(self.create_delay)
        room_id = f"!r{next(_ids)}:example.org"
        room = FakeRoom(create=kwargs, members={self.mxid: "join"})
        for ev in kwargs.get("initial_state") or []:
            room.state[(ev["type"], ev["state_key"])] = ev["content"]
        self.rooms[room_id] = room
        return room_id

    async def get_state_event(self, room_id: str, type: EventType, state_key: str = "") -> Any:
        room = self.rooms.get(room_id)
        if type == EventType.ROOM_MEMBER:
            if room is None:
                raise MForbidden(403, "You don't have permission to access that room.")
            membership = room.members.get(state_key)
            if membership is None:
                # As Synapse answers for someone who was never in the room.
                raise MNotFound(404, "Event not found.")
            return Member(membership=Membership(membership))
        content = room.state.get((str(type), state_key)) if room else None
        if content is None:
            raise MNotFound(404, "no such state")
        if type == EventType.ROOM_NAME:
            return RoomNameStateEventContent(name=content.get("name", ""))
        return content

    async def invite_user(self, room_id: str, user_id: str) -> None:
        self._call("invite_user")
        self.rooms[room_id].members[user_id] = "invite"

    async def join_room(self, room_id: str, max_retries: int = 4) -> str:
        self._call("join_room")
        self.rooms.setdefault(room_id, FakeRoom()).members[self.mxid] = "join"
        return room_id

    async def join_room_by_id(self, room_id: str) -> str:
        return await self.join_room(room_id)

    async def leave_room(self, room_id: str) -> None:
        self._call("leave_room")
        self.rooms.setdefault(room_id, FakeRoom()).members[self.mxid] = "leave"

    async def forget_room(self, room_id: str) -> None:
        pass

    async def kick_user(self, room_id: str, user_id: str, reason: str = "") -> None:
        self._call("kick_user")
        self.rooms[room_id].members[user_id] = "leave"

    async def get_displayname(self, user_id: str) -> str:
        return "Alice"

    async def set_typing(self, room_id: str, timeout: int = 0) -> None:
        self.typing.append((room_id, timeout))

    async def get_account_data(self, type: str, room_id: str | None = None) -> dict[str, Any]:
        try:
            return self.account_data[(room_id or "", type)]
        except KeyError:
            raise MNotFound(404, "not found") from None

    async def set_account_data(
        self, type: str, content: dict[str, Any], room_id: str | None = None
    ) -> None:
        self._call(f"account_data:{type}", room_id or "")
        self.account_data[(room_id or "", type)] = content

    async def encrypt(self, room_id: str, event_type: EventType, content: Any) -> dict[str, Any]:
        """Megolm stand-in: the ciphertext is the plain event as JSON."""
        plain = content.serialize() if hasattr(content, "serialize") else content
        return encrypted_content(str(event_type), plain, BOT_SESSION, "BOTDEVICE")

    async def get_messages(
        self, room_id: str, *args: Any, filter_json: Any = None, **kwargs: Any
    ) -> PaginatedMessages:
        if room_id not in self.history:
            raise MForbidden(403, "not in the room")
        events = [
            Event.deserialize({**e, "room_id": room_id})
            for e in _of_types(self.history[room_id], filter_json)
        ]
        return PaginatedMessages(start="a", end="b", events=events)

    # The outbox's transport

    async def request(
        self, method: Method, path: PathBuilder, body: dict[str, Any]
    ) -> dict[str, Any]:
        self.requests.append(str(path))
        parts = [unquote(p) for p in str(path).split("/")]
        room_id, kind = parts[4], parts[5]
        if self.rate_limited > 0:
            self.rate_limited -= 1
            self.rate_limit_hits += 1
            raise RateLimited(self.retry_after_ms)
        if kind == "state":
            return {"event_id": await self._state(room_id, parts[6], parts[7], body)}
        self._call("send", room_id)
        if self.send_delay:
            await asyncio.sleep(self.send_delay)
        event_id = f"$bot{next(_ids)}"
        event_type = "m.room.redaction" if kind == "redact" else parts[6]
        self.sent.append(Sent(room_id, event_id, body, event_type))
        self.add_to_history(
            room_id,
            {
                "type": event_type,
                "room_id": room_id,
                "event_id": event_id,
                "sender": self.mxid,
                "origin_server_ts": now_ms(),
                "content": body,
            },
        )
        return {"event_id": event_id}

    async def _state(self, room_id: str, type: str, state_key: str, body: dict[str, Any]) -> str:
        self._call(f"state:{type}", state_key)
        room = self.rooms.get(room_id)
        if room is None or room.members.get(self.mxid) != "join":
            raise MForbidden(403, "not in room")
        room.state[(type, state_key)] = body
        return f"$state{next(_ids)}"

    # The plugin's own API requests

    async def api_request(self, path: str, query: dict[str, str]) -> dict[str, Any]:
        if path == SLIDING_SYNC_PATH:
            if not self.sliding:
                raise MUnrecognized(404, "Unrecognized request")
            return as_sliding_sync(self.sync_data)
        if path.endswith("/capabilities"):
            available = {version: "stable" for version in self.room_versions}
            versions = {"default": self.room_versions[-1], "available": available}
            return {"capabilities": {"m.room_versions": versions}}
        if path.endswith("/messages"):
            return self._messages(unquote(path.split("/")[-2]), query)
        parts = [unquote(p) for p in path.split("/")]
        if "event" in parts or "relations" in parts:
            return self._event_or_edits(parts)
        return self._sync(json.loads(query.get("filter") or "{}"))

    def _event_or_edits(self, parts: list[str]) -> dict[str, Any]:
        """`/rooms/{room}/event/{id}`, or `/rooms/{room}/relations/{id}/m.replace` (newest
        first), from the room's timeline."""
        room_id = parts[parts.index("rooms") + 1]
        if "event" in parts:
            event_id = parts[parts.index("event") + 1]
            for event in self.history.get(room_id, []):
                if event["event_id"] == event_id:
                    return copy.deepcopy(event)
            raise MNotFound(404, "no such event")
        event_id = parts[parts.index("relations") + 1]
        edits = [
            e
            for e in self.history.get(room_id, [])
            if (e.get("content", {}).get("m.relates_to") or {}).get("rel_type") == "m.replace"
            and e["content"]["m.relates_to"].get("event_id") == event_id
        ]
        return {"chunk": copy.deepcopy(edits)}

    def reaction(self, room_id: str, event_id: str, key: str, sender: str = ALICE) -> ReactionEvent:
        """A reaction that `sender` sent, as the event maubot hands the plugin."""
        relates = {"rel_type": "m.annotation", "event_id": event_id, "key": key}
        event = {
            "type": "m.reaction",
            "room_id": room_id,
            "event_id": f"$react{next(_ids)}",
            "sender": sender,
            "origin_server_ts": now_ms(),
            "content": {"m.relates_to": relates},
        }
        return ReactionEvent.deserialize(event)

    def _messages(self, room_id: str, query: dict[str, str]) -> dict[str, Any]:
        """One page backwards from the newest event (or from the `from` token)."""
        events = _of_types(self.history.get(room_id, []), query.get("filter"))
        start = int(query.get("from") or 0)
        end = start + int(query.get("limit") or 10)
        return {"chunk": events[start:end], "end": str(end) if end < len(events) else None}

    def _sync(self, sync_filter: dict[str, Any]) -> dict[str, Any]:
        """`sync_data`, with the newest events of each joined room's timeline where the filter
        asks for a timeline."""
        timeline = (sync_filter.get("room") or {}).get("timeline") or {}
        limit = timeline.get("limit", 0)
        if not limit or not self.history:
            return self.sync_data
        data = copy.deepcopy(self.sync_data)
        join = data.setdefault("rooms", {}).setdefault("join", {})
        for room_id, events in self.history.items():
            room = self.rooms.get(room_id)
            if room is not None and room.members.get(self.mxid) != "join":
                continue
            newest = _of_types(events, timeline)[:limit]
            join.setdefault(room_id, {})["timeline"] = {"events": newest[::-1]}
        return data

    # What a user sees

    def messages(self, room_id: str) -> list[Sent]:
        """The bot's messages in the room as a member reads them: encrypted ones decrypted."""
        shown: list[Sent] = []
        for sent in self.sent:
            if sent.room_id == room_id and sent.type == "m.room.encrypted":
                plain = json.loads(sent.content["ciphertext"])
                sent = Sent(room_id, sent.event_id, plain["content"], plain["type"])
            if sent.room_id == room_id and sent.type == "m.room.message":
                shown.append(sent)
        return shown

    def bodies(self, room_id: str) -> list[str]:
        """The body of every message the bot sent in the room, edits as they were sent."""
        return [s.content.get("body", "") for s in self.messages(room_id)]

    def final_texts(self, room_id: str) -> dict[str, str]:
        """Reply-to event id -> the final text of the bot's answer to it, edits applied."""
        result: dict[str, str] = {}
        originals: dict[str, str] = {}
        for s in self.messages(room_id):
            relates = s.content.get("m.relates_to", {})
            if relates.get("rel_type") == "m.replace":
                target = originals.get(relates["event_id"])
                if target is not None:
                    result[target] = s.content["m.new_content"]["body"]
                continue
            reply_to = relates.get("m.in_reply_to", {}).get("event_id")
            if reply_to:
                originals[s.event_id] = reply_to
                result[reply_to] = s.content["body"]
        return result

    def joined(self) -> list[str]:
        return [r for r, room in self.rooms.items() if room.members.get(self.mxid) == "join"]

    def spaces(self) -> list[str]:
        return [r for r in self.joined() if self.rooms[r].create.get("creation_content")]


def as_sliding_sync(data: dict[str, Any]) -> dict[str, Any]:
    """The rooms of a /sync answer as a simplified sliding sync answers them: joined rooms and
    invites only."""
    rooms: dict[str, Any] = {}
    account_data: dict[str, Any] = {}
    for room_id, room in (data.get("rooms") or {}).get("join", {}).items():
        rooms[room_id] = {"required_state": room.get("state", {}).get("events", [])}
        account_data[room_id] = room.get("account_data", {}).get("events", [])
    for room_id, room in (data.get("rooms") or {}).get("invite", {}).items():
        rooms[room_id] = {"invite_state": room["invite_state"]["events"]}
    return {"pos": "1", "rooms": rooms, "extensions": {"account_data": {"rooms": account_data}}}
