"""Sends message events so that a homeserver's rate limit can be waited out as it asks.

mautrix 0.21 turns an M_LIMIT_EXCEEDED answer into an exception without its body, so the
`retry_after_ms` the homeserver names would be lost. Events for unencrypted rooms are therefore
sent here directly, with the client's own HTTP session, homeserver URL and token. In an
encrypted room mautrix must encrypt the event, and a rate limit there names no wait.
"""

from __future__ import annotations

from typing import Any

from maubot.matrix import MaubotMatrixClient
from mautrix.api import Path
from mautrix.errors import MLimitExceeded, make_request_error
from mautrix.types import EventType


class RateLimited(Exception):
    def __init__(self, retry_after_ms: int | None) -> None:
        super().__init__(f"rate limited, retry after {retry_after_ms} ms")
        self.retry_after_ms = retry_after_ms


class MatrixSender:
    def __init__(self, client: MaubotMatrixClient) -> None:
        self.client = client

    async def send(self, room_id: str, content: dict[str, Any]) -> str:
        """Sends one m.room.message event; raises RateLimited when the homeserver says so."""
        client = self.client
        if client.crypto is not None and await client.state_store.is_encrypted(room_id):
            try:
                return await client.send_message_event(room_id, EventType.ROOM_MESSAGE, content)
            except MLimitExceeded as e:
                raise RateLimited(None) from e
        api = client.api
        path = str(Path.v3.rooms[room_id].send[EventType.ROOM_MESSAGE][api.get_txn_id()])
        url = api.base_url.with_path(api.base_url.raw_path.rstrip("/") + path, encoded=True)
        headers = {"Authorization": f"Bearer {api.token}"}
        async with api.session.put(url, json=content, headers=headers) as resp:
            text = await resp.text()
            try:
                data = await resp.json(content_type=None)
            except ValueError:
                data = {}
            data = data if isinstance(data, dict) else {}
        if resp.status == 429:
            retry_after = data.get("retry_after_ms")
            raise RateLimited(retry_after if isinstance(retry_after, int) else None)
        if resp.status >= 300 or "event_id" not in data:
            raise make_request_error(resp.status, text, data.get("errcode"), data.get("error"))
        return data["event_id"]
