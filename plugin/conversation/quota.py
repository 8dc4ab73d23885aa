"""Per-user limits: messages per minute (in memory) and estimated tokens per day (in the DB)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from ..db import Store
from ..ops.settings import Settings
from ..ops.throttle import Throttle

WINDOW = 60.0
# A user over a limit is told once per this many seconds, not once per message.
NOTICE_INTERVAL = 60.0


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


class Quota:
    def __init__(self, store: Store, settings: Callable[[], Settings]) -> None:
        self.store = store
        self.settings = settings
        self._recent: dict[str, deque[float]] = {}
        self._notices = Throttle(NOTICE_INTERVAL)

    def admit_message(self, user_id: str, now: float | None = None) -> bool:
        """Counts a message towards the per-minute limit; False when it is over the limit."""
        limit = self.settings().messages_per_minute
        if limit <= 0:
            return True
        now = time.monotonic() if now is None else now
        recent = self._recent.setdefault(user_id, deque())
        while recent and now - recent[0] >= WINDOW:
            recent.popleft()
        if len(recent) >= limit:
            return False
        recent.append(now)
        return True

    async def tokens_exhausted(self, user_id: str) -> bool:
        limit = self.settings().daily_tokens
        if limit <= 0:
            return False
        usage = await self.store.usage.get(user_id, today())
        return usage is not None and usage.tokens >= limit

    async def record(self, user_id: str, tokens: int) -> None:
        await self.store.usage.add(user_id, today(), 1, tokens)

    def should_notify(self, user_id: str, kind: str, now: float | None = None) -> bool:
        return self._notices.allow((user_id, kind), now)
