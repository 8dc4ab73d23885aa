"""At most one notice per key and interval, so that a busy user is not told the same thing twice."""

from __future__ import annotations

import time
from collections.abc import Hashable

# Past this many keys, those whose interval is over are forgotten.
PRUNE_AT = 1000


class Throttle:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[Hashable, float] = {}

    def allow(self, key: Hashable, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        self._last[key] = now
        if len(self._last) > PRUNE_AT:
            self._last = {k: t for k, t in self._last.items() if now - t < self.interval}
        return True

    def __len__(self) -> int:
        return len(self._last)
