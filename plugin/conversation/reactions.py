"""Reactions on the bot's answers as controls: 🔁 regenerates the answer in place, ⏹️ stops an
answer that is still streaming, 👍 and 👎 are feedback (metrics by agent; an `http` agent is
told). Only the room's owner and its collaborators control its answers; every other reaction is
ignored. Reactions sent while the bot was down are not acted on afterwards, as commands are not.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import Logger

import aiohttp
from attrs import define
from maubot.matrix import MaubotMatrixClient
from mautrix.errors import MatrixError
from mautrix.types import ReactionEvent

from ..agents.base import BackendError
from ..agents.feedback import DOWN, UP, feedback_payload, send_feedback
from ..db import Store
from ..db.rows import ACTIVE, FeedbackRow, RoomRow, now_ms
from ..matrix.encryption import Encryption
from ..ops import access
from ..ops.metrics import Metrics
from ..ops.settings import Settings
from .context import chat_id_of
from .controls import RunningAnswers
from .queues import RoomQueues
from .regenerate import answered_message, regeneration

REGENERATE = "🔁"
STOP = "⏹"
RATINGS = {"👍": UP, "👎": DOWN}
_VARIATION = "\ufe0f"


def control_of(key: str) -> str:
    """The reaction's emoji without the variation selector that some clients add."""
    return key.replace(_VARIATION, "").strip()


def may_react(settings: Settings, room: RoomRow, user_id: str) -> bool:
    if not access.is_allowed(settings, user_id):
        return False
    return user_id == room.owner or user_id in room.collaborators


@define(eq=False)
class Reactions:
    client: MaubotMatrixClient
    encryption: Encryption
    store: Store
    queues: RoomQueues
    running: RunningAnswers
    http: aiohttp.ClientSession
    metrics: Metrics
    settings: Callable[[], Settings]
    log: Logger

    async def on_reaction(self, evt: ReactionEvent) -> None:
        relation = evt.content.relates_to
        if evt.sender == self.client.mxid or relation is None or not relation.event_id:
            return
        control = control_of(relation.key or "")
        if control not in (REGENERATE, STOP, *RATINGS):
            return
        room = await self.store.rooms.get(evt.room_id)
        settings = self.settings()
        if room is None or room.state != ACTIVE or not may_react(settings, room, evt.sender):
            return
        target = relation.event_id
        if control == STOP:
            if self.running.stop(target):
                self.log.info(f"{evt.sender} stopped the answer {target} in {room.room_id}")
        elif control == REGENERATE:
            await self._regenerate(room, target)
        else:
            await self._feedback(room, evt.sender, target, RATINGS[control], settings)

    async def _regenerate(self, room: RoomRow, target: str) -> None:
        if any(job.resume and target in job.resume for job in self.queues.pending(room.room_id)):
            return
        try:
            job = await regeneration(self.encryption, self.store, room, target)
        except MatrixError as e:
            self.log.warning(f"Not regenerating {target} in {room.room_id}: {e}")
            return
        if job is None:
            self.log.info(f"Not regenerating {target} in {room.room_id}: not an answer in context")
            return
        self.queues.enqueue(job)

    async def _feedback(
        self, room: RoomRow, sender: str, target: str, rating: str, settings: Settings
    ) -> None:
        answered = await answered_message(self.encryption, room.room_id, target)
        agent = settings.agents.get(room.agent_id)
        if answered is None or agent is None:
            return
        message_id, thread = answered
        thread = thread if settings.threads else ""
        row = FeedbackRow(target, sender, room.room_id, agent.id, rating, now_ms())
        await self.store.feedback.record(row)
        self.metrics.feedback(agent.id, rating)
        body = feedback_payload(
            agent, chat_id_of(room, thread), room.room_id, sender, target, message_id, rating
        )
        try:
            await send_feedback(self.http, agent, body)
        except BackendError as e:
            self.log.warning(f"Agent {agent.id} did not take feedback: {e.describe()}")
            self.metrics.error(f"feedback_{e.kind}", e.describe(), agent_id=agent.id)
