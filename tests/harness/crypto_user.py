"""A Matrix user with an end-to-end encryption device, as Element would be in an encrypted room.

It is a MatrixUser (same HTTP calls, same /sync loop, same timeline and wait helpers) whose device
has an mautrix OlmMachine: its keys are uploaded before the first /sync, room keys sent to it are
stored before the timeline of the same /sync is read, and every m.room.encrypted event is replaced
in the recorded timeline by what it decrypts to (type and content as the sender wrote them). So
`replies_to`, `wait_for_reply` and `events` work unchanged in encrypted rooms; `raw_types` and
`get_event` tell what the homeserver stored. Like Element, it answers a key request from another
user's device with the key of a session it shared with that device.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from mautrix.client import Client, SyncStream
from mautrix.client.state_store import MemoryStateStore
from mautrix.crypto import OlmMachine
from mautrix.crypto.attachments import decrypt_attachment, encrypt_attachment
from mautrix.crypto.sessions import OutboundGroupSession
from mautrix.crypto.store import MemoryCryptoStore
from mautrix.errors import DecryptionError
from mautrix.types import (
    DeviceID,
    DeviceIdentity,
    DeviceLists,
    DeviceOTKCount,
    EncryptedEvent,
    EncryptionAlgorithm,
    EventType,
    RequestedKeyInfo,
    RoomID,
    RoomKeyEventContent,
    SessionID,
    StateEvent,
    ToDeviceEvent,
    TrustState,
    UserID,
)

from .matrix_user import MatrixUser

if TYPE_CHECKING:
    from .synapse import Synapse

ENCRYPTED = "m.room.encrypted"
MEGOLM = "m.megolm.v1.aes-sha2"
# Element shares a new megolm session when the user starts typing, well before the message. A
# bot whose /sync brings the room key and the message together may try the message first (mautrix
# handles them concurrently) and drop it as undecryptable; this lead keeps them apart.
SHARE_LEAD = 1.0
log = logging.getLogger("tests.crypto_user")


def encryption_state() -> dict[str, Any]:
    """createRoom's `initial_state` entry that makes a room encrypted, as Element sends it."""
    return {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}


class _StateStore(MemoryStateStore):
    """mautrix's memory store lacks the one query an OlmMachine adds: rooms shared with a user."""

    async def find_shared_rooms(self, user_id: UserID) -> list[RoomID]:
        return [
            room_id
            for room_id, members in self.members.items()
            if user_id in members and self.encryption.get(room_id) is not None
        ]


class CryptoMatrixUser(MatrixUser):
    def __init__(
        self, homeserver_url: str, user_id: str, access_token: str, device_id: str
    ) -> None:
        super().__init__(homeserver_url, user_id, access_token)
        self.device_id = device_id
        self.state_store = _StateStore()
        self.crypto_store = MemoryCryptoStore(account_id=user_id, pickle_key="test")
        self.client = Client(
            UserID(user_id),
            DeviceID(device_id),
            base_url=homeserver_url,
            token=access_token,
            client_session=self.http,
            state_store=self.state_store,
        )
        self.machine = OlmMachine(self.client, self.crypto_store, self.state_store)
        # Test devices are never verified nor cross-signed: share keys with them all the same,
        # both when sending a room key and when one is requested.
        self.machine.send_keys_min_trust = TrustState.UNVERIFIED
        self.machine.share_keys_min_trust = TrustState.UNVERIFIED
        self.machine.allow_key_share = self._allow_key_share
        self.client.crypto = self.machine
        # The key requests this user received, and those it answered with a key.
        self.key_requests: list[str] = []
        self.keys_forwarded: list[str] = []
        # event_id -> the event's type as the homeserver delivered it (m.room.encrypted or not).
        self.raw_types: dict[str, str] = {}
        # event_id -> the encrypted event as delivered, for events that were decrypted.
        self.encrypted: dict[str, dict[str, Any]] = {}
        # Encrypted events not (yet) decrypted, retried at every /sync: a key may come later.
        self.undecrypted: dict[str, tuple[str, dict[str, Any]]] = {}
        self.crypto_errors: list[str] = []

    @classmethod
    async def register(
        cls, synapse: Synapse, localpart: str, password: str = "password"
    ) -> CryptoMatrixUser:
        """A new account with one device, syncing, its keys uploaded: ready to be encrypted for."""
        account = await asyncio.to_thread(synapse.register, localpart, password)
        user = cls(synapse.url, account["user_id"], account["access_token"], account["device_id"])
        user.start()
        assert user._sync_task is not None
        synced = asyncio.ensure_future(user.synced_once.wait())
        # A failed key upload ends the /sync task: report its error, not a 30 s timeout.
        await asyncio.wait(
            {synced, user._sync_task}, timeout=30, return_when=asyncio.FIRST_COMPLETED
        )
        if not synced.done():
            synced.cancel()
            failed = user._sync_task.done() and user._sync_task.exception()
            await user.close()
            raise failed or TimeoutError(f"{user.user_id} never finished its first /sync")
        return user

    # Setup and /sync

    async def _sync_loop(self) -> None:
        # The keys must be on the homeserver before anyone can encrypt for this device, so before
        # `synced_once` tells the test that the user is ready.
        await self.crypto_store.put_device_id(DeviceID(self.device_id))
        await self.machine.load()
        await self.machine.share_keys()
        await super()._sync_loop()

    async def _on_sync(self, data: dict[str, Any]) -> None:
        """Handles the crypto parts of a /sync in order: keys first, then the timeline.

        A failure is recorded in `crypto_errors` rather than raised: raising would stop the
        /sync loop, and a test would only see a timeout.
        """
        try:
            await self._handle_device_data(data)
            for raw in data.get("to_device", {}).get("events", []):
                if raw.get("type") == ENCRYPTED:
                    await self._handle_to_device(raw)
                elif raw.get("type") == "m.room_key_request":
                    await self._handle_key_request(raw)
            rooms = data.get("rooms", {})
            for section in ("join", "leave"):
                for room_id, room in rooms.get(section, {}).items():
                    await self._track_state(room_id, room)
                    for ev in room.get("timeline", {}).get("events", []):
                        self.raw_types[ev["event_id"]] = ev["type"]
                        if ev["type"] == ENCRYPTED:
                            self.undecrypted[ev["event_id"]] = (room_id, ev)
            for event_id, (room_id, ev) in list(self.undecrypted.items()):
                if await self._decrypt_in_place(room_id, ev):
                    del self.undecrypted[event_id]
        except Exception as e:
            log.exception("crypto handling of a /sync failed")
            self.crypto_errors.append(f"{type(e).__name__}: {e}")

    async def _handle_device_data(self, data: dict[str, Any]) -> None:
        counts = data.get("device_one_time_keys_count", {})
        await self.machine.handle_otk_count(
            DeviceOTKCount(
                curve25519=counts.get("curve25519", 0),
                signed_curve25519=counts.get("signed_curve25519", 0),
            )
        )
        lists = data.get("device_lists", {})
        await self.machine.handle_device_lists(
            DeviceLists(changed=lists.get("changed", []), left=lists.get("left", []))
        )

    async def _handle_to_device(self, raw: dict[str, Any]) -> None:
        evt = ToDeviceEvent.deserialize(raw)
        # What mautrix's own sync dispatch sets before a handler sees the event.
        evt.type = evt.type.with_class(EventType.Class.TO_DEVICE)
        evt.source = SyncStream.TO_DEVICE
        try:
            await self.machine.handle_to_device_event(evt)
        except DecryptionError as e:
            self.crypto_errors.append(f"to-device from {raw.get('sender')}: {e}")

    async def _handle_key_request(self, raw: dict[str, Any]) -> None:
        evt = ToDeviceEvent.deserialize(raw)
        evt.type = evt.type.with_class(EventType.Class.TO_DEVICE)
        evt.source = SyncStream.TO_DEVICE
        if raw.get("content", {}).get("action") == "request":
            self.key_requests.append(raw["content"]["body"]["session_id"])
        await self.machine.handle_room_key_request(evt)

    async def _allow_key_share(self, device: DeviceIdentity, request: RequestedKeyInfo) -> bool:
        """Element shares a key on request with the devices it shared the session with: here,
        every device of the room's other members, and never its own (mautrix's rule)."""
        if device.user_id == self.user_id:
            return await self.machine.default_allow_key_share(device, request)
        self.keys_forwarded.append(request.session_id)
        return True

    async def _track_state(self, room_id: str, room: dict[str, Any]) -> None:
        """Keeps mautrix's state store current: whether a room is encrypted, and who is in it.

        A membership change drops the room's outbound session, so that the next message goes out
        in a new session shared with the new members (mautrix's own rule).
        """
        events = room.get("state", {}).get("events", []) + room.get("timeline", {}).get(
            "events", []
        )
        for raw in events:
            if "state_key" not in raw:
                continue
            evt = StateEvent.deserialize({**raw, "room_id": room_id})
            await self.state_store.update_state(evt)
            if evt.type == EventType.ROOM_MEMBER:
                await self.machine.handle_member_event(evt)

    async def _decrypt_in_place(self, room_id: str, ev: dict[str, Any]) -> bool:
        """Turns a recorded m.room.encrypted event into the event it carries; False if it can't.

        mautrix checks the event (session, sender's device, replay) but returns it re-parsed, and
        re-serialising a parsed edit rewrites its content. The session it found gives the exact
        plaintext.
        """
        try:
            evt = EncryptedEvent.deserialize({**ev, "room_id": room_id})
            await self.machine.decrypt_megolm_event(evt)
            session = await self.crypto_store.get_group_session(
                RoomID(room_id), evt.content.session_id
            )
            plaintext, _ = session.decrypt(evt.content.ciphertext)
        except DecryptionError:
            return False
        payload = json.loads(plaintext)
        content = payload["content"]
        relation = ev["content"].get("m.relates_to")
        if relation and "m.relates_to" not in content:
            content["m.relates_to"] = relation
        self.encrypted[ev["event_id"]] = dict(ev)
        ev["type"], ev["content"] = payload["type"], content
        return True

    # Sending

    async def create_room(
        self,
        name: str | None = None,
        invite: list[str] | None = None,
        is_direct: bool = False,
        encrypted: bool = False,
        **extra: Any,
    ) -> str:
        """MatrixUser.create_room; `encrypted` adds m.room.encryption to the initial state, which
        is how Element makes an encrypted room or direct chat."""
        if encrypted:
            extra["initial_state"] = [*extra.get("initial_state", []), encryption_state()]
        return await super().create_room(name, invite, is_direct, **extra)

    async def new_session(self, room_id: str) -> None:
        """Drops the room's outbound session, so the next message goes in a new one (as when a
        session rotates)."""
        await self.crypto_store.remove_outbound_group_session(RoomID(room_id))

    async def share_session(self, room_id: str) -> None:
        """Shares a new megolm session with the room's devices unless one is already out.

        Then waits SHARE_LEAD, so that the bot stores the key before the first message using it.
        """
        session = await self.crypto_store.get_outbound_group_session(RoomID(room_id))
        if session is not None and session.shared and not session.expired:
            return
        await self.client.share_group_session(RoomID(room_id))
        await asyncio.sleep(SHARE_LEAD)

    async def send(
        self, room_id: str, content: dict[str, Any], type: str = "m.room.message"
    ) -> str:
        """Sends as Element does: encrypted with the room's megolm session in an encrypted room."""
        if not await self.is_encrypted(room_id):
            return await super().send(room_id, content, type)
        await self.share_session(room_id)
        encrypted = await self.machine.encrypt_megolm_event(
            RoomID(room_id), EventType.find(type, EventType.Class.MESSAGE), content
        )
        return await super().send(room_id, encrypted.serialize(), ENCRYPTED)

    async def file_location(
        self, room_id: str, data: bytes, mimetype: str, name: str
    ) -> dict[str, Any]:
        """In an encrypted room, a file is encrypted (EncryptedFile) before it is uploaded."""
        if not await self.is_encrypted(room_id):
            return await super().file_location(room_id, data, mimetype, name)
        ciphertext, info = encrypt_attachment(data)
        mxc = await self.upload(ciphertext, "application/octet-stream")
        return {"file": {**info.serialize(), "url": mxc}}

    async def download_decrypted(self, file: dict[str, Any]) -> bytes:
        """The plaintext of an EncryptedFile the bot sent."""
        ciphertext = await self.download(file["url"])
        return decrypt_attachment(
            ciphertext, file["key"]["k"], file["hashes"]["sha256"], file["iv"]
        )

    async def send_undecryptable(self, room_id: str, body: str) -> str:
        """A text message in a fresh megolm session whose key is sent to no device at all.

        What a client with a broken key share produces: the event is well formed, but neither
        the bot nor this user can ever decrypt it.
        """
        event_id, _ = await self.send_with_key_withheld(room_id, body)
        return event_id

    async def send_with_key_withheld(
        self, room_id: str, body: str
    ) -> tuple[str, Callable[[str], Awaitable[None]]]:
        """A text message in a fresh megolm session whose key goes to nobody yet; the returned
        function sends it to one user's devices later: a key that arrives late."""
        session = OutboundGroupSession(RoomID(room_id))
        # mautrix refuses to encrypt with a session it has not shared; this one is "shared" with
        # no device on purpose, and never stored, so the room's real session is left alone.
        session.shared = True
        # Exported before the message, so that the key opens it (index 0).
        key = RoomKeyEventContent(
            algorithm=EncryptionAlgorithm.MEGOLM_V1,
            room_id=RoomID(room_id),
            session_id=SessionID(session.id),
            session_key=session.session_key,
        )
        plaintext = {
            "room_id": room_id,
            "type": "m.room.message",
            "content": {"msgtype": "m.text", "body": body},
        }
        content = {
            "algorithm": MEGOLM,
            "sender_key": self.machine.account.identity_key,
            "device_id": self.device_id,
            "session_id": session.id,
            "ciphertext": session.encrypt(json.dumps(plaintext)),
        }
        event_id = await super().send(room_id, content, ENCRYPTED)

        async def share_with(user_id: str) -> None:
            # Known since this user shared a session in a room with them.
            devices = await self.crypto_store.get_devices(UserID(user_id))
            if not devices:
                raise RuntimeError(f"{self.user_id} knows no device of {user_id}")
            for device in devices.values():
                await self.machine.send_encrypted_to_device(device, EventType.ROOM_KEY, key)

        return event_id, share_with
