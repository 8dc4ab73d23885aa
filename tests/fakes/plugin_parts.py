"""The plugin's real parts wired in-process around a fake Matrix client, for unit tests and bench.

The Store runs on a real SQLite database; only the homeserver is faked.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from pathlib import Path
from typing import Any

import aiohttp
from attrs import define, field
from mautrix.errors import MLimitExceeded
from mautrix.types import EventID, EventType, MessageEvent, RoomID, UserID
from mautrix.util.async_db import Database
from ruamel.yaml import YAML

from plugin.config import Settings, parse_settings
from plugin.context import ContextManager
from plugin.db import ACTIVE, RoomRow, Store, now_ms
from plugin.dispatch import Dispatcher
from plugin.matrix_send import MatrixSender, RateLimited
from plugin.matrix_state import MatrixRecord, new_chat_id
from plugin.metrics import Metrics
from plugin.migrations import upgrade_table
from plugin.quota import Quota

ROOT = Path(__file__).resolve().parents[2]
BOT = "@bot:example.org"
_events = itertools.count()


def settings(**overrides: Any) -> Settings:
    """base-config.yaml with dotted keys replaced, validated like the admin UI's config."""
    data = YAML(typ="safe").load((ROOT / "base-config.yaml").read_text())
    for key, value in overrides.items():
        node = data
        *parents, last = key.split(".")
        for parent in parents:
            node = node[parent]
        node[last] = value
    return parse_settings(data, "example.org")


async def sqlite_store(path: Path) -> tuple[Database, Store]:
    db = Database.create(f"sqlite:{path}", upgrade_table=upgrade_table)
    await db.start()
    return db, Store(db)


@define
class Sent:
    room_id: str
    event_id: str
    content: dict[str, Any]


class FakeSender(MatrixSender):
    """Sends through the fake client, whose rate limit names its wait like a homeserver's."""

    async def send(self, room_id: str, content: dict[str, Any]) -> str:
        try:
            return await self.client.send_message_event(room_id, EventType.ROOM_MESSAGE, content)
        except MLimitExceeded as e:
            raise RateLimited(getattr(e, "retry_after_ms", None)) from e


@define
class FakeClient:
    """The parts of maubot's client that the dispatcher and MatrixRecord use."""

    mxid: str = BOT
    sent: list[Sent] = field(factory=list)
    typing: list[tuple[str, int]] = field(factory=list)
    account_data: dict[tuple[str, str], dict[str, Any]] = field(factory=dict)
    # Each send first raises this many M_LIMIT_EXCEEDED errors, with this retry_after_ms.
    rate_limited: int = 0
    retry_after_ms: int | None = None
    rate_limit_hits: int = 0
    send_delay: float = 0.0

    async def send_message_event(
        self, room_id: str, event_type: EventType, content: dict[str, Any], **_: Any
    ) -> str:
        if self.rate_limited > 0:
            self.rate_limited -= 1
            self.rate_limit_hits += 1
            error = MLimitExceeded(429, "Too Many Requests")
            if self.retry_after_ms is not None:
                error.retry_after_ms = self.retry_after_ms  # type: ignore[attr-defined]
            raise error
        if self.send_delay:
            await asyncio.sleep(self.send_delay)
        event_id = f"$bot{next(_events)}"
        self.sent.append(Sent(room_id, event_id, content))
        return event_id

    async def set_typing(self, room_id: str, timeout: int = 0) -> None:
        self.typing.append((room_id, timeout))

    async def get_account_data(self, type: str, room_id: str | None = None) -> dict[str, Any]:
        from mautrix.errors import MNotFound

        try:
            return self.account_data[(room_id or "", type)]
        except KeyError:
            raise MNotFound(404, "not found") from None

    async def set_account_data(
        self, type: str, content: dict[str, Any], room_id: str | None = None
    ) -> None:
        self.account_data[(room_id or "", type)] = content

    # What a user sees

    def final_texts(self, room_id: str) -> dict[str, str]:
        """Reply-to event id -> the final text of the bot's answer to it."""
        by_id = {s.event_id: s for s in self.sent if s.room_id == room_id}
        result: dict[str, str] = {}
        originals: dict[str, str] = {}
        for s in by_id.values():
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


def make_event(
    room_id: str,
    body: str,
    sender: str = "@alice:example.org",
    *,
    msgtype: str = "m.text",
    event_id: str | None = None,
    relates_to: dict[str, Any] | None = None,
) -> MessageEvent:
    content: dict[str, Any] = {"msgtype": msgtype, "body": body}
    if relates_to:
        content["m.relates_to"] = relates_to
    return MessageEvent.deserialize(
        {
            "type": "m.room.message",
            "room_id": RoomID(room_id),
            "event_id": EventID(event_id or f"$user{next(_events)}"),
            "sender": UserID(sender),
            "origin_server_ts": now_ms(),
            "content": content,
        }
    )


def room_row(room_id: str, owner: str = "@alice:example.org", agent_id: str = "echo") -> RoomRow:
    return RoomRow(
        room_id=room_id,
        owner=owner,
        space_id="!space:example.org",
        agent_id=agent_id,
        chat_id=new_chat_id(),
        title="",
        context_start=None,
        share_memory=True,
        state=ACTIVE,
        moved_to=None,
        last_event_id=None,
        last_event_ts=0,
        created_at=now_ms(),
    )


@define
class Parts:
    db: Database
    store: Store
    client: FakeClient
    dispatcher: Dispatcher
    context: ContextManager
    metrics: Metrics
    current: list[Settings]

    def configure(self, **overrides: Any) -> None:
        self.current[0] = settings(**overrides)

    async def close(self) -> None:
        await self.dispatcher.stop()
        await self.db.stop()


async def make_parts(
    path: Path, http: aiohttp.ClientSession | None = None, **overrides: Any
) -> Parts:
    db, store = await sqlite_store(path)
    client = FakeClient()
    current = [settings(**overrides)]
    metrics = Metrics()
    context = ContextManager(store, MatrixRecord(client))  # type: ignore[arg-type]
    dispatcher = Dispatcher(
        client=client,
        store=store,
        context=context,
        quota=Quota(store, lambda: current[0]),
        metrics=metrics,
        settings=lambda: current[0],
        http=http,  # type: ignore[arg-type]
        log=logging.getLogger("test.dispatch"),
        sender=FakeSender(client),  # type: ignore[arg-type]
    )
    dispatcher.start()
    return Parts(db, store, client, dispatcher, context, metrics, current)
