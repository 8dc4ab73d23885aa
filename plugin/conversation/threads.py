"""Threads as conversations: a message in a thread of a working room belongs to that thread.

A thread has its own context (its turns carry the thread's root), seeded with the root, and its
own platform chat id, derived from the room's chat id and the root: a rebuild from Matrix gives
the same id. A clear or a compaction inside a thread starts the thread anew; its start event is
recorded in the binding (`thread_starts`), so the new id is derived again after a rebuild too.
"""

from __future__ import annotations

import uuid
from typing import Any

from attrs import define, field
from mautrix.types import MessageEvent

from ..agents.base import Turn
from ..db.cache import MISSING, RowCache
from ..matrix.encryption import Encryption
from ..matrix.events import current_content, read_event
from ..ops.settings import Settings

_NAMESPACE = uuid.UUID("0c9f6f3e-3b8a-4d5e-9a51-5b7f9a6c2d14")
# Thread starts one binding keeps; the oldest are forgotten (their threads start from the root).
MAX_THREAD_STARTS = 200
# Thread roots remembered, so that a busy thread does not read its root for every message.
CACHED_ROOTS = 1000


def thread_root(content: Any) -> str:
    """The root of the thread a message's content (parsed, or raw JSON) is in, or ''."""
    if isinstance(content, dict):
        relation = content.get("m.relates_to")
        if isinstance(relation, dict) and relation.get("rel_type") == "m.thread":
            root = relation.get("event_id")
            return root if isinstance(root, str) else ""
        return ""
    getter = getattr(content, "get_thread_parent", None)
    return str(getter() or "") if getter is not None else ""


def thread_of(evt: MessageEvent, settings: Settings) -> str:
    """The conversation a message belongs to: its thread, with `rooms.threads` on; else the
    room's main timeline ('')."""
    return thread_root(evt.content) if settings.threads else ""


def thread_chat_id(room_chat_id: str, root: str, start: str | None) -> str:
    """The chat id of a thread: the same for the same room chat id, root and start."""
    return str(uuid.uuid5(_NAMESPACE, "\n".join([room_chat_id, root, start or ""])))


def with_start(starts: dict[str, str], root: str, start: str) -> dict[str, str]:
    """The binding's thread starts with a new one, bounded (the oldest forgotten first)."""
    updated = {k: v for k, v in starts.items() if k != root}
    updated[root] = start
    while len(updated) > MAX_THREAD_STARTS:
        del updated[next(iter(updated))]
    return updated


@define(eq=False)
class ThreadRoots:
    """The seed of each thread's context: its root message, read from Matrix."""

    encryption: Encryption
    _cache: RowCache[Turn | None] = field(init=False, factory=lambda: RowCache(CACHED_ROOTS))

    async def seed(self, room_id: str, root: str) -> Turn | None:
        cached = self._cache.get((room_id, root))
        if cached is not MISSING:
            return cached  # type: ignore[return-value]
        turn = await self._read(room_id, root)
        self._cache.put((room_id, root), turn)
        return turn

    async def _read(self, room_id: str, root: str) -> Turn | None:
        event = await read_event(self.encryption, room_id, root)
        if event is None or event.get("type") != "m.room.message":
            return None
        content = await current_content(self.encryption, room_id, event)
        body = content.get("body")
        if not isinstance(body, str) or not body.strip():
            return None
        sender = str(event.get("sender") or "")
        if sender == self.encryption.client.mxid:
            return Turn("assistant", body)
        return Turn("user", body, sender)
