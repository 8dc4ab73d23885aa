"""Messages the bot cannot decrypt: their key may arrive late, or never.

maubot's client decrypts an encrypted event before the plugin sees it, and when the key is not
there it only logs "Failed to decrypt". So the plugin takes the encrypted event too. When its key
is missing, a message for an agent is recorded as awaiting its key, and the bot waits a bounded
time for the key (`rooms.key_wait`), asking the sender's devices for it. A key that comes makes
the event go on as maubot would have sent it on; the decrypted message takes the place of the
record, so it is answered once. A key that never comes: the sender is told once, with a reply to
the message, which is then answered in the delivery state (and in Matrix, by the reply), so no
restart tells it again; `/status` and `/metrics` count it. The catch-up waits for the keys of
those it finds in the timeline the same way (`read_late`), and tells them the same way (`tell`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from logging import Logger

from attrs import define, field
from maubot.matrix import MaubotMatrixClient
from mautrix.client import SyncStream
from mautrix.types import EncryptedEvent, Event, MessageEvent

from ..db import Store
from ..db.rows import ACTIVE, ANSWERED, AWAITING_KEY, RECEIVED, RoomRow
from ..matrix.encryption import Encryption, is_aside
from ..matrix.replies import ReplyTarget, Timeline
from ..ops.locks import KeyedLocks
from ..ops.metrics import Metrics
from ..ops.settings import Settings
from .group import may_talk
from .intake import Intake, is_agent_message
from .refusals import Refusals

UNDECRYPTABLE = "undecryptable"
# A message for an agent, readable or not.
Message = MessageEvent | EncryptedEvent
# A key that arrived this recently may have come just after maubot tried to decrypt with it.
NEW_KEY_SECONDS = 5.0


def for_agent(evt: EncryptedEvent, room: RoomRow, settings: Settings) -> bool:
    """What `intake.is_agent_message` would decide, as far as it can be told without the text."""
    if is_aside(evt) or room.state != ACTIVE:
        return False
    return may_talk(settings, room, evt.sender)


def wording(crypto: bool) -> Callable[[int], str]:
    def told(count: int) -> str:
        what = "this message" if count == 1 else f"these {count} messages"
        if not crypto:
            return (
                f"🔒 I can't read {what}: this room is encrypted, and this bot has no "
                "encryption support now. It did not go to the agent. Ask an admin, or use an "
                "unencrypted room."
            )
        return (
            f"🔒 I could not decrypt {what}, so it did not go to the agent: its key never "
            "reached me, although I asked your devices for it. Please send it again."
        )

    return told


@define(eq=False)
class Undecryptable:
    client: MaubotMatrixClient
    encryption: Encryption
    store: Store
    intake: Intake
    refusals: Refusals
    metrics: Metrics
    settings: Callable[[], Settings]
    log: Logger
    _locks: KeyedLocks = field(init=False, factory=KeyedLocks)

    async def on_encrypted(self, evt: EncryptedEvent) -> None:
        """The live handler of every m.room.encrypted event, next to maubot's own decryption."""
        if evt.sender == self.client.mxid or is_aside(evt):
            return
        key_age = await self.encryption.key_age(evt)
        if key_age is not None:
            if key_age < NEW_KEY_SECONDS:
                await self._raced(evt)
            return
        room = await self.store.rooms.get(evt.room_id)
        ours = room is not None and for_agent(evt, room, self.settings())
        if ours and self.encryption.enabled:
            # Recorded first, so that a crash while waiting leaves it to the next start.
            await record(self.store, evt, AWAITING_KEY)
        if await self.encryption.wait_for_key(evt, self.settings().key_wait):
            decrypted = await self.encryption.decrypt_event(evt)
            if decrypted is not None:
                # What maubot's decryption would have done had the key been there: commands
                # run, and a message for the agent replaces its record in the intake.
                self.client.dispatch_event(decrypted, _source(evt))
                return
        if ours and room is not None:
            await self.tell(room, evt)
            return
        self.metrics.undecryptable()
        self.log.warning(
            f"Could not decrypt {evt.event_id} from {evt.sender} in {evt.room_id}; it is not a "
            "message for an agent, so nobody is told"
        )

    async def _raced(self, evt: EncryptedEvent) -> None:
        """The key is here, so maubot decrypted the event, unless the key landed just after it
        tried (a room key and its first message in one /sync). For a key that new, the message
        also goes to the intake, which takes each message once."""
        decrypted = await self.encryption.decrypt_event(evt)
        if isinstance(decrypted, MessageEvent):
            await self.intake.on_message(decrypted)

    async def read_late(
        self, room: RoomRow, found: list[Message], timeline: Timeline, states: dict[str, str]
    ) -> list[Message]:
        """The catch-up's messages, with those that could not be decrypted and still need an
        answer read after a wait for their keys (asking their senders' devices for them).

        One read this way that is no message for the agent (a command sent while the bot was
        down) is dropped and settled, as it would be in a plain room.
        """
        waiting = [
            evt
            for evt in found
            if isinstance(evt, EncryptedEvent)
            and not timeline.answered(evt.event_id)
            and states.get(evt.event_id) != ANSWERED
        ]
        if not waiting or not self.encryption.enabled:
            return found
        key_wait = self.settings().key_wait
        await asyncio.gather(*(self.encryption.wait_for_key(evt, key_wait) for evt in waiting))
        read: dict[str, MessageEvent | None] = {}
        for evt in waiting:
            decrypted = await self.encryption.decrypt_event(evt)
            if decrypted is not None:
                timeline.unreadable.discard(evt.event_id)
                read[evt.event_id] = await self._settle_read(room, evt, decrypted, states)
        result: list[Message] = []
        for evt in found:
            if evt.event_id not in read:
                result.append(evt)
            elif (message := read[evt.event_id]) is not None:
                result.append(message)
        return result

    async def _settle_read(
        self, room: RoomRow, evt: EncryptedEvent, decrypted: Event, states: dict[str, str]
    ) -> MessageEvent | None:
        """The message, if it is one for the agent. A record that awaited the key is replaced
        by the message, or settled."""
        mine = isinstance(decrypted, MessageEvent) and is_agent_message(
            decrypted, room, self.settings()
        )
        if evt.event_id in states:
            if mine:
                await record(self.store, decrypted, RECEIVED)
            else:
                await self.store.messages.set_state(evt.event_id, ANSWERED)
            states[evt.event_id] = RECEIVED if mine else ANSWERED
        return decrypted if mine else None

    async def tell(self, room: RoomRow, evt: EncryptedEvent) -> None:
        """Tells the sender, once, that this message could not be decrypted, and counts it.

        A Matrix failure leaves it recorded and not answered: the next start tells it.
        """
        async with self._locks.hold(evt.event_id):
            await record(self.store, evt, AWAITING_KEY)
            states = await self.store.messages.states([evt.event_id])
            if states.get(evt.event_id) == ANSWERED:
                return
            target = ReplyTarget(room.room_id, evt.event_id)
            await self.refusals.refuse(target, UNDECRYPTABLE, wording(self.encryption.enabled))
            await self.store.messages.set_state(evt.event_id, ANSWERED)
        self.metrics.undecryptable()
        self.log.warning(f"Told {evt.sender} that {evt.event_id} in {room.room_id} is unreadable")


async def record(store: Store, evt: Message, state: str) -> None:
    """Records a message in the delivery state, with its content as the bot read it."""
    content = json.dumps(evt.content.serialize())
    await store.messages.add(evt.event_id, evt.room_id, evt.sender, evt.timestamp, content, state)


def _source(evt: EncryptedEvent) -> SyncStream:
    return getattr(evt, "source", None) or (SyncStream.JOINED_ROOM | SyncStream.TIMELINE)
