"""Messages that do not go to the agent get one notice per room and reason: the first is a reply
to the message, and as more join within a minute the notice is edited to count them. It names
every message it answers (`COVERS_KEY`), so they count as answered in Matrix too."""

from __future__ import annotations

import time
from collections.abc import Callable

from attrs import define, field

from ..db import Store
from ..matrix.outbox import Outbox
from ..matrix.render import edit_content, render
from ..matrix.replies import COVERS_KEY, NOTICE, ReplyTarget
from ..ops import access
from ..ops.settings import Settings

WINDOW = 60.0
# A notice names at most this many messages; the next one starts a new notice.
MAX_COVERED = 100

# The notice's text for a number of messages.
Wording = Callable[[int], str]


@define
class _Burst:
    event_id: str
    started: float
    covers: list[str] = field(factory=list)


def these(count: int) -> str:
    return "this message" if count == 1 else f"these {count} messages"


REVOKED = (
    "Your access to the agents was withdrawn, so I no longer answer your messages. Your rooms "
    "stay as they are, and work again when an admin gives you access back."
)


@define(eq=False)
class Refusals:
    outbox: Outbox
    store: Store
    _bursts: dict[tuple[str, str], _Burst] = field(init=False, factory=dict)

    async def refuse(self, target: ReplyTarget, reason: str, wording: Wording) -> None:
        now = time.monotonic()
        self._bursts = {k: b for k, b in self._bursts.items() if now - b.started < WINDOW}
        key = (target.room_id, reason)
        burst = self._bursts.get(key)
        if burst is None or len(burst.covers) >= MAX_COVERED:
            covers = [target.event_id]
            event_id = await self.outbox.reply(target, wording(1), extra={COVERS_KEY: covers})
            self._bursts[key] = _Burst(event_id, now, covers)
            return
        burst.covers.append(target.event_id)
        content = {**render(wording(len(burst.covers)), NOTICE), COVERS_KEY: list(burst.covers)}
        await self.outbox.send(target.room_id, edit_content(burst.event_id, content))

    async def not_answered(self, target: ReplyTarget, agent_id: str, settings: Settings) -> None:
        """Why a message did not go to the room's agent: it is not configured any more, or the
        sender used the day's tokens. The message is kept for a retry."""
        prefix = settings.command_prefix
        if agent_id not in settings.agents:
            await self.outbox.reply(
                target,
                f"This room's agent `{agent_id}` is not configured any more, so your message "
                f"did not go to an agent. It is kept: once an admin adds the agent back, "
                f"send `!{prefix} retry`.",
            )
            return
        limit = settings.daily_tokens
        await self.refuse(
            target,
            "day",
            lambda n: (
                f"You used today's allowance of {limit} tokens, so {these(n)} did not "
                f"go to the agent. It is kept: send `!{prefix} retry` tomorrow (UTC)."
            ),
        )

    async def over_minute(self, target: ReplyTarget, limit: int) -> None:
        """The sender passed `limits.messages_per_minute`: the message is not answered."""
        await self.refuse(
            target,
            "minute",
            lambda n: (
                f"You sent more than {limit} messages in a minute, so {these(n)} "
                "did not go to the agent. Wait a moment and send it again."
            ),
        )

    async def revoked(self, target: ReplyTarget, owner: str) -> None:
        """The owner may not use the bot any more: told once, until access returns."""
        user = await self.store.users.get(owner)
        if user is not None and user.access_notice:
            return
        await self.outbox.reply(target, REVOKED, extra={COVERS_KEY: [target.event_id]})
        await self.store.users.set_access_notice(owner, True)

    async def access_changed(self, settings: Settings) -> None:
        """Forgets the notice of users whose access returned, so a new withdrawal is told."""
        for user_id in await self.store.users.told_revoked():
            if access.is_allowed(settings, user_id):
                await self.store.users.set_access_notice(user_id, False)

    def __len__(self) -> int:
        return len(self._bursts)
