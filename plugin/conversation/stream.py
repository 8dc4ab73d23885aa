"""One answer as the user sees it: a reply to their message, edited as the agent's text grows,
and split into consecutive parts wherever one event would grow too large.

The agent's deltas are buffered (`add` never waits for Matrix), and a flusher sends at most one
edit per `edit_interval`, so Matrix's pace never eats into the agent's time limit. Each part is a
reply to the user's message; all but the last are marked as continued, so that only the last
part's final edit makes the message answered. An interrupted reply (a stop or a crash while it
streamed) is taken over: its parts are edited into the complete answer, and parts it no longer
needs are redacted.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial

from attrs import define

from ..matrix.outbox import Outbox
from ..matrix.render import PART_BUDGET, edit_content, escaped_size, render, split_point
from ..matrix.replies import CONTINUED_KEY, FAILED_KEY, NOTICE, TEXT, ReplyTarget
from ..ops.settings import Settings


@define
class Part:
    text: str = ""
    event_id: str | None = None
    # What Matrix shows of this part now: its text, and whether that is final.
    shown: str | None = None
    shown_final: bool = False


class ReplyStream:
    def __init__(
        self,
        outbox: Outbox,
        target: ReplyTarget,
        settings: Settings,
        resume: list[str] | None = None,
        after: asyncio.Future[None] | None = None,
    ) -> None:
        self.outbox = outbox
        self.target = target
        self.interval = settings.edit_interval
        self.max_edits = settings.max_edits
        self.parts: list[Part] = [Part()]
        self._reuse = list(resume or [])
        # The room's previous answer: nothing of this one is shown before it is.
        self._after = after
        self.deltas = 0
        self.edits = 0
        self.started = time.monotonic()
        self.last_sent = 0.0
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        # A new message being sent. Stopping the flusher lets that send finish: cut short, the
        # message would reach the room without its event id reaching the stream, and the final
        # show would post that part a second time instead of editing it.
        self._sending: asyncio.Future[str] | None = None
        self._error: BaseException | None = None

    def part_ids(self) -> list[str]:
        """The events of this reply in Matrix, in order: what another try takes over."""
        return [part.event_id for part in self.parts if part.event_id] + self._reuse

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_loop())

    def add(self, delta: str) -> None:
        """Takes a delta of the agent's text. Raises the Matrix error that stopped the stream."""
        if self._error is not None:
            raise self._error
        current = self.parts[-1]
        current.text += delta
        self.deltas += 1
        while escaped_size(current.text) > PART_BUDGET:
            cut = split_point(current.text, PART_BUDGET)
            current.text, rest = current.text[:cut], current.text[cut:]
            current = Part(text=rest)
            self.parts.append(current)
        self._wake.set()

    async def finish(self) -> None:
        """Shows the whole answer, final; raises a Matrix error if it cannot be shown."""
        await self._stop_flusher()
        await self._wait_for_previous()
        if len(self.parts) > 1 and not self.parts[-1].text.strip():
            # The answer ended where a part did: that part is the last one after all.
            self.parts[-2].text += self.parts.pop().text
        await self._show_all(final=True)
        await self._redact_unused()

    async def fail(self, notice: str) -> None:
        """Tells the room; a partly shown reply is closed with the notice under it."""
        await self._stop_flusher()
        await self._wait_for_previous()
        if not any(part.event_id for part in self.parts) and not self._reuse:
            content = render(notice, NOTICE)
            content[FAILED_KEY] = True
            content["m.relates_to"] = self.target.relation()
            await self.outbox.send(self.target.room_id, content)
            return
        self.parts[-1].text += f"\n\n---\n{notice}"
        await self._show_all(final=True, failed=True)
        await self._redact_unused()

    async def discard(self) -> None:
        """The answer has no text (only files): what an interrupted try showed is redacted."""
        await self._stop_flusher()
        await self._wait_for_previous()
        self._reuse += [part.event_id for part in self.parts if part.event_id]
        await self._redact_unused()

    async def close(self) -> None:
        """Stops the flusher without showing more (the answer is abandoned)."""
        await self._stop_flusher()

    async def _stop_flusher(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        if self._sending is not None:
            (outcome,) = await asyncio.gather(self._sending, return_exceptions=True)
            self._sending = None
            if isinstance(outcome, Exception) and self._error is None:
                self._error = outcome
        if self._error is not None:
            # Raised once: another try at showing the answer starts from a working stream.
            error, self._error = self._error, None
            raise error

    async def _wait_for_previous(self) -> None:
        if self._after is not None:
            await asyncio.gather(self._after, return_exceptions=True)
            self._after = None

    async def _flush_loop(self) -> None:
        try:
            await self._wait_for_previous()
            while True:
                await self._wake.wait()
                self._wake.clear()
                wait = self.interval - (time.monotonic() - max(self.last_sent, self.started))
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._show_streaming()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._error = e

    async def _show_streaming(self) -> None:
        # Parts that are complete are shown final at once; the growing one as an edit. The list
        # is read again after every send: deltas that arrive meanwhile can complete more parts,
        # and each must be in the room before the ones after it.
        await self._show_complete_parts()
        current = self.parts[-1]
        if not current.text.strip():
            return
        if current.event_id is None and not self._reuse:
            if self.deltas > 1:
                await self._show(current, final=False, continued=False)
        elif self.edits < self.max_edits:
            self.edits += 1
            await self._show(current, final=False, continued=False)

    async def _show_all(self, final: bool, failed: bool = False) -> None:
        await self._show_complete_parts()
        await self._show(self.parts[-1], final=final, continued=False, failed=failed)

    async def _show_complete_parts(self) -> None:
        shown = 0
        while shown < len(self.parts) - 1:
            await self._show(self.parts[shown], final=True, continued=True)
            shown += 1

    async def _show(self, part: Part, final: bool, continued: bool, failed: bool = False) -> None:
        if part.shown == part.text and part.shown_final == final and not failed:
            return
        content = render(part.text, TEXT, streaming=not final)
        if continued:
            content[CONTINUED_KEY] = True
        if failed:
            content[FAILED_KEY] = True
        self.last_sent = time.monotonic()
        if part.event_id is None and self._reuse:
            part.event_id = self._reuse.pop(0)
        if part.event_id is None:
            content["m.relates_to"] = self.target.relation()
            sending = asyncio.ensure_future(self.outbox.send(self.target.room_id, content))
            sending.add_done_callback(partial(_record_event_id, part))
            self._sending = sending
            await asyncio.shield(sending)
        else:
            await self.outbox.send(self.target.room_id, edit_content(part.event_id, content))
        part.shown, part.shown_final = part.text, final

    async def _redact_unused(self) -> None:
        while self._reuse:
            await self.outbox.redact(self.target.room_id, self._reuse.pop(0), "replaced")


def _record_event_id(part: Part, sending: asyncio.Future[str]) -> None:
    """The part's event, once its send is done, even if the show that started it was stopped."""
    if not sending.cancelled() and sending.exception() is None:
        part.event_id = sending.result()
