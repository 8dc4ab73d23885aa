"""Handles on the answers being written right now, so that a reaction can stop one (⏹️).

An answer is running while its agent call streams; once the agent is done, its last edit is
only a moment away and a stop has nothing left to stop. The map holds running answers only, so
it is as small as the work in progress (at most one per conversation).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from attrs import define, field

from ..agents.base import Usage
from .stream import ReplyStream

STOPPED_NOTE = "\n\n(Stopped.)"


@define(eq=False)
class CallControl:
    """One agent call's handle: a stop request, and what the call reported."""

    requested: asyncio.Event = field(factory=asyncio.Event)
    usage: Usage | None = None
    stopped: bool = False


@define(eq=False)
class RunningAnswers:
    # The user event an answer replies to -> its stream and its call's handle.
    _running: dict[str, tuple[ReplyStream, CallControl]] = field(init=False, factory=dict)

    @contextmanager
    def running(self, event_id: str, stream: ReplyStream) -> Iterator[CallControl]:
        control = CallControl()
        self._running[event_id] = (stream, control)
        try:
            yield control
        finally:
            if self._running.get(event_id, (None, None))[1] is control:
                del self._running[event_id]

    def stop(self, answer_event: str) -> bool:
        """Stops the running answer that this event is part of. False if none is running."""
        for stream, control in self._running.values():
            if answer_event in stream.part_ids():
                control.requested.set()
                return True
        return False

    def __len__(self) -> int:
        return len(self._running)
