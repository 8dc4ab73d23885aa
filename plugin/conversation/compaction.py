"""`!ai context compact`, run from the room's queue: the agent summarises the context, and the
summary opens a new one."""

from __future__ import annotations

from logging import Logger

from attrs import define
from mautrix.errors import MatrixError

from ..agents.base import BackendError
from ..db import Store
from ..db.rows import RoomRow
from ..matrix.outbox import Outbox
from ..matrix.replies import ReplyTarget
from ..ops.metrics import Metrics
from ..ops.settings import AgentSettings, Settings
from .agent_call import AgentCaller
from .context import COMPACT_PROMPT, ContextManager
from .queues import Job


def agent_failed(
    metrics: Metrics, log: Logger, agent: AgentSettings, room_id: str, error: BackendError
) -> None:
    """An agent's failure, counted against it (a Matrix failure never is)."""
    log.warning(f"Agent {agent.id} failed in {room_id}: {error.describe()}")
    metrics.error(f"backend_{error.kind}", error.describe(), agent_id=agent.id)


@define(eq=False)
class Compaction:
    store: Store
    context: ContextManager
    caller: AgentCaller
    outbox: Outbox
    metrics: Metrics
    log: Logger

    async def run(self, job: Job, room: RoomRow, settings: Settings) -> None:
        target = ReplyTarget.of(job.event)
        agent = settings.agents.get(room.agent_id)
        turns = await self.store.turns.of_room(room.room_id, job.thread)
        if agent is None or not turns:
            await self.outbox.reply(target, "Nothing to compact.")
            return
        request = await self.context.request_for(
            room, agent, job.sender, COMPACT_PROMPT, thread=job.thread
        )
        try:
            summary = await self.caller.call(agent, request, settings, None)
        except BackendError as e:
            agent_failed(self.metrics, self.log, agent, room.room_id, e)
            await self.outbox.reply(
                target,
                f"⚠️ The context was not compacted because {agent.name} failed: {e.describe()}. "
                f"It is unchanged; send "
                f"`!{settings.command_prefix} context compact` to try again.",
            )
            return
        chat_id = await self.context.start_new(room, job.event.event_id, summary, job.thread)
        try:
            await self.outbox.reply(
                target,
                f"Context compacted: {len(turns)} turns became this summary, the first turn of a "
                f"new context (chat `{chat_id[:8]}`).\n\n{summary}",
            )
        except MatrixError as e:
            # Done already: a Matrix error here must not make the turn compact the summary.
            self.log.warning(f"Compacted {room.room_id}, but could not say so: {e}")
