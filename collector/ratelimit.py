"""A small per-key rate limit for log lines about what exporters send."""

from __future__ import annotations

import time
from collections import OrderedDict

# Keys remembered; past this the least recent is forgotten.
MAX_KEYS = 10_000


class RateLimit:
    """Allows a few events per key per minute; counts what it held back."""

    def __init__(self, per_minute: int) -> None:
        """Start with no keys."""
        self.per_minute = per_minute
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self.suppressed = 0

    def allow(self, key: str, now: float | None = None) -> bool:
        """Return True if one more event for this key may be logged now."""
        now = time.monotonic() if now is None else now
        start, count = self._windows.get(key, (now, 0))
        if now - start >= 60.0:
            start, count = now, 0
        self._windows[key] = (start, count + 1)
        self._windows.move_to_end(key)
        if len(self._windows) > MAX_KEYS:
            self._windows.popitem(last=False)
        if count < self.per_minute:
            return True
        self.suppressed += 1
        return False
