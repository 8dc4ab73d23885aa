"""A real Matrix user, talking the client-server API over HTTP, as Element would.

A background /sync loop records every event; the wait_* helpers poll that record.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
from attrs import define

if TYPE_CHECKING:
    from .synapse import Synapse

STREAMING_KEY = "org.agentspaces.streaming"
_txn = itertools.count()
_localparts = itertools.count()


class MatrixError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.errcode = body.get("errcode")
        self.body = body


@define
class Reply:
    """A bot reply to one user event, as the user sees it after following edits."""

    event_id: str
    body: str
    content: dict[str, Any]
    edits: int
    final: bool
    # The event it answers (m.in_reply_to), if any.
    in_reply_to: str | None = None


class MatrixUser:
    def __init__(self, homeserver_url: str, user_id: str, access_token: str) -> None:
        self.url = homeserver_url
        self.user_id = user_id
        self.token = access_token
        self.http = aiohttp.ClientSession()
        self.timeline: dict[str, list[dict[str, Any]]] = {}
        self.state: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
        self.invites: dict[str, list[dict[str, Any]]] = {}
        self.typing: dict[str, list[list[str]]] = {}
        self._changed = asyncio.Event()
        self._sync_task: asyncio.Task | None = None
        self._since: str | None = None
        self.synced_once = asyncio.Event()

    # HTTP

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        prefix: str = "/_matrix/client/v3",
        **query: Any,
    ) -> Any:
        for _ in range(10):
            async with self.http.request(
                method,
                f"{self.url}{prefix}{path}",
                json=body,
                params={k: v for k, v in query.items() if v is not None},
                headers={"Authorization": f"Bearer {self.token}"},
            ) as resp:
                data = await resp.json(content_type=None) if resp.content_length != 0 else {}
                if resp.status == 429:
                    await asyncio.sleep(data.get("retry_after_ms", 100) / 1000)
                    continue
                if resp.status >= 400:
                    raise MatrixError(resp.status, data or {})
                return data
        raise MatrixError(429, {"errcode": "M_LIMIT_EXCEEDED"})

    # Actions

    async def create_room(
        self,
        name: str | None = None,
        invite: list[str] | None = None,
        is_direct: bool = False,
        **extra: Any,
    ) -> str:
        body: dict[str, Any] = {"preset": "private_chat", "is_direct": is_direct, **extra}
        if name:
            body["name"] = name
        if invite:
            body["invite"] = invite
        return (await self.request("POST", "/createRoom", body))["room_id"]

    async def invite(self, room_id: str, user_id: str) -> None:
        await self.request("POST", f"/rooms/{quote(room_id)}/invite", {"user_id": user_id})

    async def join(self, room_id: str) -> None:
        await self.request("POST", f"/join/{quote(room_id)}", {})

    async def leave(self, room_id: str) -> None:
        await self.request("POST", f"/rooms/{quote(room_id)}/leave", {})

    async def send(
        self, room_id: str, content: dict[str, Any], type: str = "m.room.message"
    ) -> str:
        txn = f"t{time.time_ns()}-{next(_txn)}"
        path = f"/rooms/{quote(room_id)}/send/{type}/{txn}"
        return (await self.request("PUT", path, content))["event_id"]

    async def upload(self, data: bytes, content_type: str, filename: str | None = None) -> str:
        """Uploads a file to the homeserver's media repository; returns its mxc URI."""
        async with self.http.post(
            f"{self.url}/_matrix/media/v3/upload",
            data=data,
            params={"filename": filename} if filename else {},
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": content_type},
        ) as resp:
            answer = await resp.json(content_type=None)
            if resp.status >= 400:
                raise MatrixError(resp.status, answer or {})
            return answer["content_uri"]

    async def download(self, mxc: str) -> bytes:
        """A file from the media repository, through authenticated media (Matrix 1.11)."""
        server_media = mxc.removeprefix("mxc://")
        async with self.http.get(
            f"{self.url}/_matrix/client/v1/media/download/{server_media}",
            headers={"Authorization": f"Bearer {self.token}"},
        ) as resp:
            if resp.status >= 400:
                raise MatrixError(resp.status, await resp.json(content_type=None) or {})
            return await resp.read()

    async def send_file(
        self,
        room_id: str,
        data: bytes,
        name: str,
        mimetype: str,
        msgtype: str = "m.image",
        caption: str = "",
        extra: dict[str, Any] | None = None,
    ) -> str:
        """Uploads a file and sends it as Element does; `caption` is the body (MSC2530)."""
        content = {
            "msgtype": msgtype,
            "body": caption or name,
            "filename": name,
            "info": {"mimetype": mimetype, "size": len(data)},
            **await self.file_location(room_id, data, mimetype, name),
            **(extra or {}),
        }
        return await self.send(room_id, content)

    async def file_location(
        self, room_id: str, data: bytes, mimetype: str, name: str
    ) -> dict[str, Any]:
        """Where a sent file's content points: `url` (a crypto user encrypts: `file`)."""
        return {"url": await self.upload(data, mimetype, name)}

    async def send_text(
        self,
        room_id: str,
        body: str,
        thread_root: str | None = None,
        mentions: list[str] | None = None,
        reply_to: str | None = None,
    ) -> str:
        """A text message; in a thread, with intentional mentions (`m.mentions`), or as a reply
        (as Element sends them: no fallback quote in the body)."""
        content: dict[str, Any] = {"msgtype": "m.text", "body": body}
        if thread_root:
            content["m.relates_to"] = {
                "rel_type": "m.thread",
                "event_id": thread_root,
                "is_falling_back": reply_to is None,
                "m.in_reply_to": {"event_id": reply_to or thread_root},
            }
        elif reply_to:
            content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
        if mentions is not None:
            content["m.mentions"] = {"user_ids": mentions}
        return await self.send(room_id, content)

    async def react(self, room_id: str, event_id: str, key: str) -> str:
        """A reaction (an annotation) on an event."""
        relates = {"rel_type": "m.annotation", "event_id": event_id, "key": key}
        return await self.send(room_id, {"m.relates_to": relates}, "m.reaction")

    async def send_state(
        self, room_id: str, type: str, content: dict[str, Any], state_key: str = ""
    ) -> str:
        path = f"/rooms/{quote(room_id)}/state/{type}/{quote(state_key)}"
        return (await self.request("PUT", path, content))["event_id"]

    async def get_state(self, room_id: str, type: str, state_key: str = "") -> dict[str, Any]:
        return await self.request(
            "GET", f"/rooms/{quote(room_id)}/state/{type}/{quote(state_key, safe='')}"
        )

    async def get_event(self, room_id: str, event_id: str) -> dict[str, Any]:
        """One event as the homeserver stores it: an encrypted one keeps m.room.encrypted."""
        return await self.request("GET", f"/rooms/{quote(room_id)}/event/{quote(event_id)}")

    async def is_encrypted(self, room_id: str) -> bool:
        if ("m.room.encryption", "") in self.state.get(room_id, {}):
            return True
        try:
            await self.get_state(room_id, "m.room.encryption")
        except MatrixError as e:
            if e.status == 404:
                return False
            raise
        return True

    async def full_state(self, room_id: str) -> list[dict[str, Any]]:
        return await self.request("GET", f"/rooms/{quote(room_id)}/state")

    async def joined_rooms(self) -> list[str]:
        return (await self.request("GET", "/joined_rooms"))["joined_rooms"]

    async def members(self, room_id: str) -> dict[str, str]:
        """user_id -> membership, read from the room's state."""
        state = await self.full_state(room_id)
        return {
            ev["state_key"]: ev["content"].get("membership")
            for ev in state
            if ev["type"] == "m.room.member"
        }

    # Sync

    def start(self) -> None:
        self._sync_task = asyncio.create_task(self._sync_loop())

    async def close(self) -> None:
        if self._sync_task:
            self._sync_task.cancel()
            try:
                await self._sync_task
            except (asyncio.CancelledError, Exception):
                pass
        await self.http.close()

    async def _sync_loop(self) -> None:
        sync_filter = '{"room":{"timeline":{"limit":200},"state":{"lazy_load_members":false}}}'
        while True:
            try:
                data = await self.request(
                    "GET",
                    "/sync",
                    since=self._since,
                    timeout=5000 if self._since else 0,
                    filter=sync_filter,
                )
            except (aiohttp.ClientError, MatrixError):
                await asyncio.sleep(0.2)
                continue
            self._since = data["next_batch"]
            await self._on_sync(data)
            self._apply(data)
            self.synced_once.set()
            self._changed.set()

    async def _on_sync(self, data: dict[str, Any]) -> None:
        """Sees each /sync response before it is recorded; a crypto-capable user decrypts here."""

    def _apply(self, data: dict[str, Any]) -> None:
        rooms = data.get("rooms", {})
        for room_id, room in rooms.get("join", {}).items():
            self.invites.pop(room_id, None)
            state = self.state.setdefault(room_id, {})
            events = room.get("state", {}).get("events", []) + room.get("timeline", {}).get(
                "events", []
            )
            for ev in events:
                if "state_key" in ev:
                    state[(ev["type"], ev["state_key"])] = ev
            self.timeline.setdefault(room_id, []).extend(room.get("timeline", {}).get("events", []))
            for ev in room.get("ephemeral", {}).get("events", []):
                if ev["type"] == "m.typing":
                    self.typing.setdefault(room_id, []).append(ev["content"].get("user_ids", []))
        for room_id, room in rooms.get("invite", {}).items():
            self.invites[room_id] = room.get("invite_state", {}).get("events", [])
        for room_id, room in rooms.get("leave", {}).items():
            self.invites.pop(room_id, None)
            self.timeline.setdefault(room_id, []).extend(room.get("timeline", {}).get("events", []))

    async def wait_for(
        self, check: Callable[[], Any], timeout: float = 20, what: str = "condition"
    ) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.user_id}: timed out waiting for {what}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 1.0))
            except asyncio.TimeoutError:
                pass

    def events(
        self, room_id: str, type: str | None = None, sender: str | None = None
    ) -> list[dict]:
        return [
            ev
            for ev in self.timeline.get(room_id, [])
            if (type is None or ev["type"] == type) and (sender is None or ev["sender"] == sender)
        ]

    def messages_from(self, room_id: str, sender: str) -> list[Reply]:
        """Every message from `sender`, each with its edits applied in order (edits are not
        listed on their own)."""
        messages: dict[str, Reply] = {}
        for ev in self.events(room_id, "m.room.message", sender):
            content = ev.get("content", {})
            relation = content.get("m.relates_to") or {}
            if relation.get("rel_type") == "m.replace":
                original = messages.get(relation.get("event_id"))
                if original is not None:
                    new = content.get("m.new_content", {})
                    original.body = new.get("body", "")
                    original.content = new
                    original.edits += 1
                    original.final = not new.get(STREAMING_KEY, False)
                continue
            messages[ev["event_id"]] = Reply(
                event_id=ev["event_id"],
                body=content.get("body", ""),
                content=content,
                edits=0,
                final=not content.get(STREAMING_KEY, False),
                in_reply_to=(relation.get("m.in_reply_to") or {}).get("event_id"),
            )
        return list(messages.values())

    def replies_to(self, room_id: str, event_id: str, sender: str) -> list[Reply]:
        """Every reply from `sender` to `event_id`, each with its edits applied in order."""
        return [m for m in self.messages_from(room_id, sender) if m.in_reply_to == event_id]

    async def load_history(self, room_id: str, page: int = 500) -> list[dict[str, Any]]:
        """Replaces the room's recorded timeline with the server's, read back with /messages.

        The sync loop's record can have gaps (a limited timeline when many events arrive at
        once); /messages pages back to the room's creation and has none.
        """
        events: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            data = await self.request(
                "GET", f"/rooms/{quote(room_id)}/messages", dir="b", limit=page, **{"from": token}
            )
            events.extend(data.get("chunk", []))
            token = data.get("end")
            if not data.get("chunk") or not token:
                break
        self.timeline[room_id] = events[::-1]
        return self.timeline[room_id]

    async def wait_for_reply(
        self, room_id: str, event_id: str, sender: str, timeout: float = 20
    ) -> Reply:
        """The bot's reply to one event once final: a streamed reply after its last edit."""

        def final_reply() -> Reply | None:
            for reply in self.replies_to(room_id, event_id, sender):
                if reply.final:
                    return reply
            return None

        return await self.wait_for(final_reply, timeout, f"a reply to {event_id} in {room_id}")

    async def wait_for_invite(
        self, check: Callable[[str, list[dict]], bool], timeout: float = 20
    ) -> str:
        def find() -> str | None:
            for room_id, state in self.invites.items():
                if check(room_id, state):
                    return room_id
            return None

        return await self.wait_for(find, timeout, "an invite")

    async def wait_for_membership(
        self, room_id: str, user_id: str, membership: str, timeout: float = 20
    ) -> None:
        def check() -> bool:
            ev = self.state.get(room_id, {}).get(("m.room.member", user_id))
            return bool(ev and ev["content"].get("membership") == membership)

        await self.wait_for(check, timeout, f"{user_id} to be {membership} in {room_id}")

    async def ask(self, room_id: str, text: str, bot: str, timeout: float = 20) -> Reply:
        """Sends a message and returns the bot's final reply to it."""
        event_id = await self.send_text(room_id, text)
        return await self.wait_for_reply(room_id, event_id, bot, timeout)


class Users:
    """Registers users on one homeserver, each with its /sync loop running, and closes them all.

    A user exists only on the homeserver that registered it, so each homeserver a test talks to
    needs users of its own.
    """

    def __init__(self, synapse: Synapse) -> None:
        self.synapse = synapse
        self._made: list[MatrixUser] = []

    async def make(self, name: str = "user") -> MatrixUser:
        localpart = f"{name}{next(_localparts)}_{uuid.uuid4().hex[:6]}"
        account = await asyncio.to_thread(self.synapse.register, localpart)
        user = MatrixUser(self.synapse.url, account["user_id"], account["access_token"])
        user.start()
        await user.synced_once.wait()
        self._made.append(user)
        return user

    async def close(self) -> None:
        for user in self._made:
            await user.close()
