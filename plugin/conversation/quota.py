"""Per-user limits: messages per minute (in memory, counted at each message's send time) and
estimated tokens per day (in the DB)."""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable

from attrs import define, field

from ..db import Store
from ..ops.settings import Settings

WINDOW = 60.0
# Users tracked before those with no recent message are forgotten.
PRUNE_AT = 1000


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


@define(eq=False)
class Quota:
    store: Store
    settings: Callable[[], Settings]
    # user -> the send times (seconds) of their admitted messages, sorted.
    _recent: dict[str, list[float]] = field(init=False, factory=dict)

    def admit_message(self, user_id: str, sent_at: float) -> bool:
        """Counts a message towards the per-minute limit at the time it was sent, so a backlog
        sent while the bot was down counts as it was sent. False when it is over the limit."""
        limit = self.settings().messages_per_minute
        if limit <= 0:
            return True
        recent = self._recent.setdefault(user_id, [])
        earliest = bisect.bisect_right(recent, sent_at - WINDOW)
        latest = bisect.bisect_right(recent, sent_at)
        if latest - earliest >= limit:
            return False
        recent.insert(latest, sent_at)
        if len(recent) > 2 * limit:
            del recent[: len(recent) - 2 * limit]
        if len(self._recent) > PRUNE_AT:
            self._prune(time.time())
        return True

    def _prune(self, now: float) -> None:
        self._recent = {u: r for u, r in self._recent.items() if r and r[-1] > now - WINDOW}

    def tracked_users(self) -> int:
        return len(self._recent)

    async def tokens_exhausted(self, user_id: str) -> bool:
        limit = self.settings().daily_tokens
        if limit <= 0:
            return False
        usage = await self.store.usage.get(user_id, today())
        return usage is not None and usage.tokens >= limit
