"""One streamed answer: a first message, edits at most every `interval`, a final edit."""

from __future__ import annotations

import time

from ..matrix.outbox import Outbox
from ..matrix.render import edit_content, render
from ..matrix.replies import NOTICE, TEXT, ReplyTarget
from ..ops.settings import Settings


class ReplyStream:
    def __init__(self, outbox: Outbox, target: ReplyTarget, settings: Settings) -> None:
        self.outbox = outbox
        self.target = target
        self.interval = settings.edit_interval
        self.max_edits = settings.max_edits
        self.text = ""
        self.deltas = 0
        self.event_id: str | None = None
        self.edits = 0
        self.started = time.monotonic()
        self.last_sent = 0.0

    async def add(self, delta: str) -> None:
        self.text += delta
        self.deltas += 1
        now = time.monotonic()
        # A reply that arrives whole, or within one interval, is one message without edits.
        if self.event_id is None:
            if self.deltas > 1 and now - self.started >= self.interval and self.text.strip():
                await self._send(self.text, TEXT, streaming=True)
        elif self.edits < self.max_edits and now - self.last_sent >= self.interval:
            self.edits += 1
            await self._send(self.text, TEXT, streaming=True)

    async def finish(self) -> None:
        await self._send(self.text, TEXT, streaming=False)

    async def fail(self, notice: str) -> None:
        """Tells the room; a partly streamed reply is closed with the notice under it."""
        if self.event_id is not None:
            await self._send(f"{self.text}\n\n---\n{notice}", TEXT, streaming=False)
        else:
            await self._send(notice, NOTICE, streaming=False)

    async def _send(self, text: str, msgtype: str, streaming: bool) -> None:
        content = render(text, msgtype, streaming)
        self.last_sent = time.monotonic()
        if self.event_id is None:
            content["m.relates_to"] = self.target.relation()
            self.event_id = await self.outbox.send(self.target.room_id, content)
        else:
            await self.outbox.send(self.target.room_id, edit_content(self.event_id, content))
