"""Reading encrypted rooms: decrypting what the timeline holds, and waiting for keys that have not
arrived yet (asking the sender's devices for them).

maubot gives a client an OlmMachine (`client.crypto`) only when its encryption packages are
installed and the client has a device. Without one, `client.crypto` is None and nothing here can
decrypt; nothing here imports the crypto packages either, so the plugin runs on a maubot without
them.

The bot's own replies in an encrypted room are encrypted too, and it reads them back with the
inbound copy of its own outbound session, which mautrix keeps in the crypto store.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from logging import Logger
from typing import Any

from attrs import define, field
from maubot.matrix import MaubotMatrixClient
from mautrix.errors import DecryptionError
from mautrix.types import EncryptedEvent, EncryptedMegolmEventContent, Event, SerializerError

ENCRYPTED = "m.room.encrypted"
# A key still in transit (a room key and its first message often come in the same /sync) gets
# this long before the sender's devices are asked for it.
IN_TRANSIT_WAIT = 2.0
# Events whose keys are awaited at the same time; past it, an event is given up on at once.
MAX_WAITING = 500
# Sessions whose keys were asked for, so that each is asked for once.
MAX_REQUESTED = 1000


def relation_of(raw: dict[str, Any]) -> dict[str, Any]:
    """An event's m.relates_to; an encrypted event keeps it in the clear."""
    relation = (raw.get("content") or {}).get("m.relates_to")
    return relation if isinstance(relation, dict) else {}


# Relations whose events are never a message for an agent: edits, reactions, references.
ASIDE_RELATIONS = ("m.replace", "m.annotation", "m.reference")


def is_aside(evt: EncryptedEvent) -> bool:
    """An edit, a reaction or a reference: its relation, in the clear, tells it."""
    return relation_of({"content": evt.content.serialize()}).get("rel_type") in ASIDE_RELATIONS


@define(eq=False)
class Encryption:
    client: MaubotMatrixClient
    log: Logger
    _waiting: int = field(init=False, default=0)
    # Insertion-ordered, so that the oldest is forgotten first.
    _requested: dict[str, None] = field(init=False, factory=dict)

    @property
    def enabled(self) -> bool:
        return self.client.crypto is not None

    async def decrypt_timeline(
        self, room_id: str, events: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """The events, oldest first, with every m.room.encrypted one the bot can read replaced by
        its plaintext; what it cannot read stays encrypted.

        What nobody reads is dropped undecrypted, which bounds the cost of a walk: the users'
        edits and reactions (never answered), and every edit of the bot's but the newest of each
        message (only its final state counts). Relations are in the clear, so this is known
        beforehand.
        """
        if not self.enabled:
            return events
        kept: list[dict[str, Any]] = []
        edited: set[str] = set()
        for raw in reversed(events):
            if raw.get("type") != ENCRYPTED:
                kept.append(raw)
                continue
            relation = relation_of(raw)
            mine = raw.get("sender") == self.client.mxid
            if relation.get("rel_type") in ASIDE_RELATIONS and not mine:
                continue
            target = relation.get("event_id") if relation.get("rel_type") == "m.replace" else None
            if target is not None and target in edited:
                continue
            plain = await self.decrypt(room_id, raw)
            if plain is not None and target is not None:
                edited.add(target)
            kept.append(plain or raw)
        return kept[::-1]

    async def decrypt(self, room_id: str, raw: dict[str, Any]) -> dict[str, Any] | None:
        """The plaintext of one raw m.room.encrypted event, shaped as the homeserver would have
        sent it unencrypted; None when the bot cannot read it."""
        try:
            evt = EncryptedEvent.deserialize({**raw, "room_id": room_id})
        except (SerializerError, KeyError, ValueError):
            return None
        decrypted = await self.decrypt_event(evt)
        if decrypted is None:
            return None
        plain = decrypted.serialize()
        return {**raw, "type": plain["type"], "content": plain["content"]}

    async def decrypt_event(self, evt: EncryptedEvent) -> Event | None:
        crypto = self.client.crypto
        if crypto is None:
            return None
        try:
            return await crypto.decrypt_megolm_event(evt)
        except DecryptionError as e:
            self.log.debug(f"Cannot decrypt {evt.event_id} in {evt.room_id}: {e}")
        except Exception as e:
            # Fetching the sender's devices or the crypto store failed: the event stays unread,
            # and the caller treats it as undecryptable rather than losing the rest of the walk.
            self.log.warning(f"Decrypting {evt.event_id} in {evt.room_id} failed: {e!r}")
        return None

    async def has_key(self, evt: EncryptedEvent) -> bool:
        crypto, content = self.client.crypto, evt.content
        if crypto is None or not isinstance(content, EncryptedMegolmEventContent):
            return False
        return await crypto.crypto_store.has_group_session(evt.room_id, content.session_id)

    async def key_age(self, evt: EncryptedEvent) -> float | None:
        """Seconds since the event's key arrived (0 when unknown), or None without the key."""
        crypto, content = self.client.crypto, evt.content
        if crypto is None or not isinstance(content, EncryptedMegolmEventContent):
            return None
        try:
            session = await crypto.crypto_store.get_group_session(evt.room_id, content.session_id)
        except Exception:
            # Withheld, or unreadable: as good as missing.
            return None
        if session is None:
            return None
        received = getattr(session, "received_at", None)
        if isinstance(received, str):
            try:
                received = datetime.fromisoformat(received)
            except ValueError:
                return 0.0
        if not isinstance(received, datetime):
            return 0.0
        # mautrix keeps a naive UTC time.
        if received.tzinfo is None:
            received = received.replace(tzinfo=timezone.utc)
        return max(time.time() - received.timestamp(), 0.0)

    async def wait_for_key(self, evt: EncryptedEvent, timeout: float) -> bool:
        """Waits at most `timeout` seconds for the event's key, asking the sender's devices for it
        once it is not simply in transit. True once the bot holds the key."""
        crypto, content = self.client.crypto, evt.content
        if crypto is None or not isinstance(content, EncryptedMegolmEventContent):
            return False
        if await self.has_key(evt):
            return True
        if self._waiting >= MAX_WAITING:
            self.log.warning(f"{MAX_WAITING} events already wait for keys; not waiting for more")
            return False
        self._waiting += 1
        try:
            first = min(IN_TRANSIT_WAIT, timeout)
            if await crypto.wait_for_session(evt.room_id, content.session_id, timeout=first):
                return True
            await self._request_key(evt, content)
            rest = max(timeout - first, 0.0)
            return await crypto.wait_for_session(evt.room_id, content.session_id, timeout=rest)
        finally:
            self._waiting -= 1

    async def _request_key(self, evt: EncryptedEvent, content: EncryptedMegolmEventContent) -> None:
        crypto = self.client.crypto
        session_id = content.session_id
        if crypto is None or session_id in self._requested:
            return
        self._requested[session_id] = None
        if len(self._requested) > MAX_REQUESTED:
            del self._requested[next(iter(self._requested))]
        # Read from the serialized content: the attributes warn that Matrix 1.3 deprecated them.
        fields = content.serialize()
        try:
            devices = [fields["device_id"]] if fields.get("device_id") else None
            if devices is None:
                devices = list(await crypto.crypto_store.get_devices(evt.sender) or {})
            if devices:
                self.log.info(f"Asking {evt.sender} for the key of {evt.event_id} ({session_id})")
                await crypto.request_room_key(
                    evt.room_id,
                    fields.get("sender_key"),
                    session_id,
                    {evt.sender: devices},
                    timeout=0,
                )
        except Exception as e:
            # A failed request only means no forwarded key: the wait goes on for a late one.
            self.log.warning(f"Could not ask {evt.sender} for the key of {evt.event_id}: {e!r}")
