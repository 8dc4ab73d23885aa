"""Showing a turn's outcome in Matrix when the homeserver fails for a while.

A failure of Matrix is not the agent's: the answer is kept and shown again after a wait. Past
the waits, a message stays unanswered in the delivery state, and the next start answers it; a
command's sender is told to send it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from logging import Logger

from attrs import define
from mautrix.errors import MatrixError

from ..matrix.outbox import Outbox
from ..matrix.replies import ReplyTarget
from .queues import MESSAGE, Job

# The waits before each new try; the tries end after the last one.
MATRIX_RETRY_WAITS = (2.0, 10.0)


@define(eq=False)
class MatrixRetry:
    outbox: Outbox
    log: Logger

    async def run(self, job: Job, show: Callable[[], Awaitable[None]]) -> bool:
        """Whether `show` got through, after as many tries as the waits allow."""
        for wait in (*MATRIX_RETRY_WAITS, None):
            try:
                await show()
                return True
            except MatrixError as e:
                if wait is None:
                    await self._gave_up(job, e)
                    return False
                self.log.warning(f"Matrix failed in {job.room_id} ({e}); trying again in {wait} s")
                await asyncio.sleep(wait)
        return False

    async def _gave_up(self, job: Job, error: MatrixError) -> None:
        if job.kind == MESSAGE:
            self.log.error(
                f"Matrix kept failing while answering {job.event.event_id} in {job.room_id} "
                f"({error}); it stays unanswered, and the next start answers it"
            )
            return
        self.log.error(f"Matrix kept failing on {job.kind} in {job.room_id}: {error}")
        try:
            await self.outbox.reply(
                ReplyTarget.of(job.event),
                f"⚠️ The homeserver failed, so this did not finish ({error}). Send the command "
                "again later.",
            )
        except MatrixError as e:
            self.log.warning(f"Could not tell {job.room_id} either: {e}")
