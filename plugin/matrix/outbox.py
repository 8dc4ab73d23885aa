"""The one sender of everything the bot puts into rooms: messages, edits, notices, command
replies, reactions, redactions, state, and files (uploaded, then sent as m.image, m.file or
m.audio; encrypted first in an encrypted room).

It encrypts where the room is encrypted, and waits out the homeserver's rate limit as it asks.
mautrix 0.21 turns an M_LIMIT_EXCEEDED answer into an exception without its body, so the
`retry_after_ms` the homeserver names would be lost: requests are therefore made here, with the
client's own HTTP session, homeserver URL and token (`HttpTransport`). A retry reuses the
transaction id, so a send whose answer was lost is not posted twice. Its failures are Matrix
failures (`MatrixError`).
"""

from __future__ import annotations

import asyncio
import json
from logging import Logger
from typing import Any, Protocol

import aiohttp
from attrs import define
from maubot.matrix import MaubotMatrixClient
from mautrix.api import Method, Path, PathBuilder
from mautrix.errors import (
    MatrixConnectionError,
    MatrixError,
    MLimitExceeded,
    MNotFound,
    make_request_error,
)
from mautrix.types import EventType, Serializable

from ..agents.files import OutFile
from ..media.crypto import encrypt_in_place
from ..ops.metrics import Metrics
from .render import render, split_text
from .replies import COVERS_KEY, NOTICE, ReplyTarget

# Tries of one request that the homeserver rate-limits, and the wait when it names none.
SEND_TRIES = 8
DEFAULT_RETRY_MS = 1000
MAX_RETRY_MS = 60_000
MESSAGE = "m.room.message"
REACTION = "m.reaction"
# Matrix refuses events over 64 KiB; an encrypted event is about a third larger than its content.
MAX_CONTENT_BYTES = 45_000
# User events one notice names as answered; an event id is about 50 bytes.
MAX_COVERS = 200


class EventTooLarge(ValueError):
    """Content that Matrix would refuse: the caller must split it (see `render.split_text`)."""


class RateLimited(Exception):
    """The homeserver asks to wait (429), or could not be reached: worth trying again."""

    def __init__(self, retry_after_ms: int | None, reason: str = "rate limited") -> None:
        super().__init__(f"{reason}, retry after {retry_after_ms} ms")
        self.retry_after_ms = retry_after_ms
        self.reason = reason


def retry_delay_ms(error: RateLimited, attempt: int) -> int:
    """The homeserver's own wait when it names one, else a growing wait."""
    value = error.retry_after_ms
    if value is not None and value >= 0:
        return int(min(value, MAX_RETRY_MS))
    return min(DEFAULT_RETRY_MS * 2 ** (attempt - 1), MAX_RETRY_MS)


class Transport(Protocol):
    async def request(
        self, method: Method, path: PathBuilder, body: dict[str, Any]
    ) -> dict[str, Any]:
        """One request; raises RateLimited on M_LIMIT_EXCEEDED, MatrixError on other errors."""
        ...


class HttpTransport:
    """Requests with the client's own session, URL and token, keeping the 429's body."""

    def __init__(self, client: MaubotMatrixClient) -> None:
        self.api = client.api

    async def request(
        self, method: Method, path: PathBuilder, body: dict[str, Any]
    ) -> dict[str, Any]:
        api = self.api
        url = api.base_url.with_path(api.base_url.raw_path.rstrip("/") + str(path), encoded=True)
        headers = {"Authorization": f"Bearer {api.token}"}
        try:
            async with api.session.request(str(method), url, json=body, headers=headers) as resp:
                text = await resp.text()
                try:
                    data = await resp.json(content_type=None)
                except ValueError:
                    data = {}
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            # The same transaction id makes the next try safe even if this one got through.
            raise RateLimited(None, f"homeserver unreachable ({type(e).__name__})") from e
        data = data if isinstance(data, dict) else {}
        if resp.status == 429:
            retry_after = data.get("retry_after_ms")
            raise RateLimited(retry_after if isinstance(retry_after, int) else None)
        if resp.status >= 300 or "event_id" not in data:
            raise make_request_error(resp.status, text, data.get("errcode"), data.get("error"))
        return data


@define(eq=False)
class Outbox:
    client: MaubotMatrixClient
    transport: Transport
    metrics: Metrics
    log: Logger

    async def send(self, room_id: str, content: dict[str, Any], event_type: str = MESSAGE) -> str:
        """Sends one message-like event and returns its id."""
        size = len(json.dumps(content))
        if size > MAX_CONTENT_BYTES:
            raise EventTooLarge(f"{size} bytes of content for {room_id}")
        # Counted from the plain content: encrypted, an edit looks like any message.
        counts = event_type == MESSAGE and "m.new_content" not in content
        if event_type != REACTION and await self._encrypted(room_id):
            encrypted = await self.client.encrypt(room_id, EventType.find(event_type), content)
            content, event_type = _serialize(encrypted), str(EventType.ROOM_ENCRYPTED)
        path = Path.v3.rooms[room_id].send[event_type][self.client.api.get_txn_id()]
        event_id = (await self._request(Method.PUT, path, content, room_id))["event_id"]
        if counts:
            self.metrics.message_out()
        return event_id

    async def reply(
        self,
        target: ReplyTarget,
        text: str,
        msgtype: str = NOTICE,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """Markdown `text` as a reply to the target event (command replies, notices); long text
        as consecutive replies. Returns the last one's id."""
        event_id = ""
        for content in _messages(text, msgtype):
            content.update(extra or {})
            content["m.relates_to"] = target.relation()
            event_id = await self.send(target.room_id, content)
        return event_id

    async def notice(self, room_id: str, text: str) -> str:
        """Markdown `text` as a notice that replies to nothing."""
        event_id = ""
        for content in _messages(text, NOTICE):
            event_id = await self.send(room_id, content)
        return event_id

    async def notice_covering(self, room_id: str, text: str, covers: list[str]) -> None:
        """A notice that answers these user events (see `replies.COVERS_KEY`); as many notices
        as it takes to name them all."""
        for start in range(0, len(covers), MAX_COVERS):
            content = {**render(text, NOTICE), COVERS_KEY: covers[start : start + MAX_COVERS]}
            await self.send(room_id, content)

    async def upload(self, room_id: str, file: OutFile) -> dict[str, Any]:
        """Uploads a file for the room through the client's media API, once: the content keys
        that locate it (`url`, or `file` in an encrypted room, where it is encrypted in place
        first). A try that failed halfway resumes from where it stopped."""
        if file.location:
            return file.location
        assert file.data is not None, "a posted file's bytes are gone"
        if file.encryption is None and await self._encrypted(room_id):
            if not isinstance(file.data, bytearray):
                file.data = bytearray(file.data)
            file.encryption = encrypt_in_place(file.data)
        mimetype = "application/octet-stream" if file.encryption else file.mimetype
        for attempt in range(1, SEND_TRIES + 1):
            try:
                mxc = await self.client.upload_media(
                    file.data,
                    mime_type=mimetype,
                    filename=None if file.encryption else file.name,
                    size=len(file.data),
                )
                break
            except (MLimitExceeded, MatrixConnectionError) as e:
                if attempt == SEND_TRIES:
                    self.metrics.error("matrix", f"uploading to {room_id}: {e}")
                    raise
                await asyncio.sleep(retry_delay_ms(RateLimited(None), attempt) / 1000)
            except MatrixError as e:
                self.metrics.error("matrix", f"uploading to {room_id}: {type(e).__name__} {e}")
                raise
        if file.encryption:
            file.location = {"file": {**file.encryption, "url": str(mxc)}}
        else:
            file.location = {"url": str(mxc)}
        return file.location

    async def send_file(
        self, target: ReplyTarget, msgtype: str, file: OutFile, extra: dict[str, Any]
    ) -> str:
        """Uploads a file and sends it as a reply to the target; returns the event id."""
        location = await self.upload(target.room_id, file)
        info: dict[str, Any] = {"mimetype": file.mimetype, "size": file.size}
        info.update(extra.pop("info", {}))
        content: dict[str, Any] = {
            "msgtype": msgtype,
            "body": file.caption or file.name,
            "filename": file.name,
            "info": info,
            **location,
            **extra,
        }
        content["m.relates_to"] = target.relation()
        return await self.send(target.room_id, content)

    async def state(
        self, room_id: str, event_type: str, content: dict[str, Any], state_key: str = ""
    ) -> str:
        path = Path.v3.rooms[room_id].state[event_type][state_key]
        return (await self._request(Method.PUT, path, content, room_id))["event_id"]

    async def redact(self, room_id: str, event_id: str, reason: str | None = None) -> str:
        path = Path.v3.rooms[room_id].redact[event_id][self.client.api.get_txn_id()]
        body = {"reason": reason} if reason else {}
        return (await self._request(Method.PUT, path, body, room_id))["event_id"]

    async def _encrypted(self, room_id: str) -> bool:
        if self.client.crypto is None:
            return False
        encrypted = await self.client.state_store.is_encrypted(room_id)
        if encrypted is None:
            try:
                await self.client.get_state_event(room_id, EventType.ROOM_ENCRYPTION)
                encrypted = True
            except MNotFound:
                encrypted = False
        return bool(encrypted)

    async def _request(
        self, method: Method, path: PathBuilder, body: dict[str, Any], room_id: str
    ) -> dict[str, Any]:
        try:
            return await self._request_retrying(method, path, body, room_id)
        except MatrixError as e:
            # Counted here, once: a Matrix failure is never an agent's.
            self.metrics.error("matrix", f"sending to {room_id}: {type(e).__name__} {e}")
            raise

    async def _request_retrying(
        self, method: Method, path: PathBuilder, body: dict[str, Any], room_id: str
    ) -> dict[str, Any]:
        for attempt in range(1, SEND_TRIES + 1):
            try:
                return await self.transport.request(method, path, body)
            except RateLimited as e:
                if attempt == SEND_TRIES and e.reason == "rate limited":
                    raise make_request_error(429, str(e), "M_LIMIT_EXCEEDED", str(e)) from e
                if attempt == SEND_TRIES:
                    raise MatrixConnectionError(str(e)) from e
                wait_ms = retry_delay_ms(e, attempt)
                self.log.info(f"Sending to {room_id}: {e.reason}; retrying in {wait_ms} ms")
                await asyncio.sleep(wait_ms / 1000)
        raise AssertionError("unreachable")


def _serialize(content: Any) -> dict[str, Any]:
    return content.serialize() if isinstance(content, Serializable) else dict(content)


def _messages(text: str, msgtype: str) -> list[dict[str, Any]]:
    """The text as one message when it fits, else as consecutive ones."""
    whole = render(text, msgtype)
    if len(json.dumps(whole)) <= MAX_CONTENT_BYTES * 9 // 10:
        return [whole]
    return [render(piece, msgtype) for piece in split_text(text)]
