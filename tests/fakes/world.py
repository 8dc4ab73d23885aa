"""The plugin's real parts wired around the one fake Matrix client, for unit tests and bench.

The store is real (SQLite or PostgreSQL); only the homeserver is faked, and, where a test
scripts it, the agent (`ScriptedAgent`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from attrs import define
from mautrix.types import EncryptedEvent, Event, MessageEvent

from plugin import parts
from plugin.agents.base import AgentRequest
from plugin.agents.files import OutFile
from plugin.conversation import agent_call
from plugin.db import Store
from plugin.db.rows import ACTIVE, RoomRow, now_ms
from plugin.matrix.binding import new_chat_id
from plugin.ops.metrics import Metrics
from plugin.ops.settings import Settings
from tests.config import settings
from tests.fakes.matrix import ALICE, FakeCrypto, FakeMatrix, FakeRoom


class ScriptedAgent:
    """Every agent's backend: answers "re: <text>" in `chunks` deltas, `gap` seconds apart, and
    records every call. `fail(n)` may return the error of the n-th call."""

    def __init__(self) -> None:
        self.calls: list[AgentRequest] = []
        self.active = 0
        self.max_active = 0
        self.gap = 0.0
        self.chunks = 1
        self.fail: Callable[[int], Exception | None] = lambda n: None
        # Raise the error after this many chunks, mid-stream, rather than at once.
        self.fail_after_chunks: int | None = None
        # Appended to every answer: a long one makes a reply of several parts.
        self.extra = ""
        # Files every answer carries after its text.
        self.files: list[OutFile] = []

    async def reply(self, request: AgentRequest) -> AsyncIterator[str | OutFile]:
        self.calls.append(request)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            error = self.fail(len(self.calls))
            if error is not None and self.fail_after_chunks is None:
                raise error
            text = f"re: {request.text}{self.extra}"
            size = -(-len(text) // self.chunks)
            for n, start in enumerate(range(0, len(text), size)):
                if error is not None and n == self.fail_after_chunks:
                    raise error
                await asyncio.sleep(self.gap)
                yield text[start : start + size]
            for file in self.files:
                yield OutFile(file.mimetype, file.name, bytearray(file.data or b""))
        finally:
            self.active -= 1

    @property
    def texts(self) -> list[str]:
        return [call.text for call in self.calls]


def script_agent(monkeypatch: pytest.MonkeyPatch) -> ScriptedAgent:
    """Puts a scripted backend behind every agent, for this test."""
    scripted = ScriptedAgent()
    monkeypatch.setattr(agent_call, "backend_for", lambda agent, http: scripted)
    return scripted


async def scripted_room(
    world: World, monkeypatch: pytest.MonkeyPatch, room_id: str, config: dict[str, Any]
) -> tuple[ScriptedAgent, RoomRow]:
    """A working room of Alice's with a scripted agent, under this config."""
    backend = script_agent(monkeypatch)
    world.configure(config)
    return backend, await world.add_room(room_id)


@define
class World:
    fake: FakeMatrix
    store: Store
    parts: parts.Parts
    metrics: Metrics
    current: list[Settings]

    @property
    def settings(self) -> Settings:
        return self.current[0]

    def configure(self, overrides: dict[str, Any] | None = None) -> None:
        """Applies a new config, as a valid admin UI change does."""
        self.current[0] = settings(overrides)

    async def add_room(self, room_id: str, owner: str = ALICE, agent_id: str = "echo") -> RoomRow:
        """A working room the bot manages, in the fake homeserver and in the store."""
        row = room_row(room_id, owner, agent_id)
        self.fake.rooms.setdefault(room_id, FakeRoom(members={self.fake.mxid: "join"}))
        self.fake.rooms[room_id].members[owner] = "join"
        await self.store.rooms.upsert(row)
        return row

    async def room(self, room_id: str) -> RoomRow:
        row = await self.store.rooms.get(room_id)
        assert row is not None, f"{room_id} has no row"
        return row

    async def say(
        self, room_id: str, text: str, sender: str = ALICE, **kwargs: Any
    ) -> MessageEvent:
        """A message in the room's timeline, handed to the plugin as maubot would."""
        evt = self.fake.message(room_id, text, sender, **kwargs)
        await self.parts.intake.on_message(evt)
        return evt

    def enable_crypto(self) -> FakeCrypto:
        """The client gets crypto, as on a maubot with its encryption packages."""
        crypto = FakeCrypto()
        self.fake.crypto = crypto
        return crypto

    async def say_encrypted(
        self, room_id: str, text: str, sender: str = ALICE, **kwargs: Any
    ) -> EncryptedEvent:
        """An encrypted message, handled as maubot's client handles it: decrypted and handed on
        when its key is here (maubot's DecryptionDispatcher), and given to the plugin's own
        m.room.encrypted handler either way."""
        evt = self.fake.encrypted_message(room_id, text, sender, **kwargs)
        crypto = self.fake.crypto
        if isinstance(crypto, FakeCrypto) and evt.content.session_id in crypto.sessions:
            decrypted = await crypto.decrypt_megolm_event(evt)
            await self.parts.intake.on_message(decrypted)  # type: ignore[arg-type]
        await self.parts.undecryptable.on_encrypted(evt)
        return evt

    async def command(self, room_id: str, args: str, sender: str = ALICE) -> MessageEvent:
        """`!ai <args>` sent in the room, routed as maubot routes the plugin's command."""
        prefix = self.settings.command_prefix
        evt = self.fake.message(room_id, f"!{prefix} {args}".rstrip(), sender)
        await self.parts.router.handle(evt, args)
        return evt

    async def settle(self, timeout: float = 5) -> None:
        """Waits until every room's queue is answered."""
        deadline = time.monotonic() + timeout
        await asyncio.gather(*self.fake.handler_tasks)
        while self.parts.queues.busy():
            assert time.monotonic() < deadline, "the queues did not drain"
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        await self.parts.startup.stop()
        await self.parts.intake.stop()


def room_row(room_id: str, owner: str = ALICE, agent_id: str = "echo") -> RoomRow:
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


def make_world(
    store: Store,
    http: aiohttp.ClientSession | None = None,
    overrides: dict[str, Any] | None = None,
    fake: FakeMatrix | None = None,
) -> World:
    fake = fake or FakeMatrix()
    current = [settings(overrides)]
    metrics = Metrics()
    built = parts.build(
        fake,  # type: ignore[arg-type]
        fake,
        store,
        http,  # type: ignore[arg-type]
        metrics,
        lambda: current[0],
        logging.getLogger("test"),
    )
    built.intake.start()
    # As after a start whose catch-up found nothing to do (tests run theirs when they need one).
    built.intake.catch_up_ended()

    async def deliver(event: Event) -> None:
        # Where the client's own dispatch leads in the plugin: its message handler.
        if isinstance(event, MessageEvent):
            await built.intake.on_message(event)

    fake.on_dispatch = deliver
    return World(fake, store, built, metrics, current)
