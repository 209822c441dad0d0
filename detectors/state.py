"""Bounded detector state: every map a flow can grow has a cap and an expiry.

Correlation compares flow start times; expiry does not. An entry expires when
the pipeline's clock (arrival time, or the capture's clock in a replay) has
gone ``idle`` seconds past its last activity, so state lives for its window
plus a lateness bound after the last flow that touched it, whether the flows
are live or an old capture replayed through a live exporter.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from itertools import repeat
from operator import add, sub
from typing import Generic, TypeVar

# Destinations kept per source: enough to count well past any sane threshold;
# each costs about 150 bytes.
MAX_DESTINATIONS_PER_SOURCE = 1024

K = TypeVar("K")
V = TypeVar("V")


def _ignore(key: object, value: object) -> None:
    """Do nothing with an evicted or expired entry."""


class BoundedMap(Generic[K, V]):
    """An insertion-ordered map with a cap and an idle expiry.

    When full, the oldest entry goes (counted as ``{name}_evicted``); an entry
    idle past the limit goes at the next ``expire`` (``{name}_expired``).
    """

    def __init__(self, cap: int, counters: Counter[str], name: str) -> None:
        """Start empty."""
        self.cap = cap
        self.counters = counters
        self.name = name
        self._items: OrderedDict[K, V] = OrderedDict()
        # Clock of each entry's last activity; None until the next expire
        # call, which stamps it: entries touched between two calls share one.
        self._touched: dict[K, float | None] = {}

    def __len__(self) -> int:
        """Return the number of entries."""
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        """Return True when the key has an entry."""
        return key in self._items

    def get(self, key: K) -> V | None:
        """Return the entry for a key, or None."""
        return self._items.get(key)

    def items(self) -> Iterator[tuple[K, V]]:
        """Iterate over a snapshot of the entries, oldest first."""
        return iter(list(self._items.items()))

    def put(self, key: K, value: V, on_evict: Callable[[K, V], None] = _ignore) -> V:
        """Set a key's entry (evicting the oldest if full) and mark it active."""
        if key not in self._items and len(self._items) >= self.cap:
            old_key, old_value = self._items.popitem(last=False)
            del self._touched[old_key]
            self.counters[f"{self.name}_evicted"] += 1
            on_evict(old_key, old_value)
        self._items[key] = value
        self._touched[key] = None
        return value

    def setdefault(
        self,
        key: K,
        make: Callable[[], V],
        on_evict: Callable[[K, V], None] = _ignore,
    ) -> V:
        """Return a key's entry, made when new, and mark it active."""
        value = self._items.get(key)
        if value is None:
            return self.put(key, make(), on_evict)
        self._touched[key] = None
        return value

    def pop(self, key: K) -> V | None:
        """Remove and return the entry for a key."""
        self._touched.pop(key, None)
        return self._items.pop(key, None)

    def expire(
        self, now: float, idle: float, on_expire: Callable[[K, V], None] = _ignore
    ) -> None:
        """Drop entries idle for more than ``idle`` seconds of the clock."""
        for key, touched in list(self._touched.items()):
            if touched is None:
                self._touched[key] = now
            elif now - touched > idle:
                value = self._items.pop(key)
                del self._touched[key]
                self.counters[f"{self.name}_expired"] += 1
                on_expire(key, value)


def widest_count(times: list[float], moment: float, width: float) -> int:
    """Return the most times that fit in one interval of ``width`` holding ``moment``.

    ``times`` is sorted. The interval may start anywhere from ``moment - width``
    to ``moment``, so a flow that arrives late still counts with those around
    its own start. The best interval starts at one of the times in that
    range, or at ``moment``; each candidate is two bisections, and the usual
    case, nothing later than ``moment``, is one.
    """
    low = bisect_left(times, moment - width)
    upto = bisect_right(times, moment)
    if upto == len(times) or times[upto] > moment + width:
        return upto - low
    starts = times[low:upto]
    best = bisect_right(times, moment + width) - bisect_left(times, moment)
    if not starts:
        return best
    ends = map(bisect_right, repeat(times), map(add, starts, repeat(width)))
    begins = map(bisect_left, repeat(times), starts)
    counts: map[int] = map(sub, ends, begins)
    return max(best, *counts)


class _Seen:
    """One key's items: each item's latest moment, and the moments in order."""

    __slots__ = ("at", "names", "times")

    def __init__(self) -> None:
        """Start empty."""
        self.at: dict[str, float] = {}
        # Parallel lists sorted by time: the moments, and whose they are.
        self.times: list[float] = []
        self.names: list[str] = []

    def insert(self, item: str, moment: float) -> None:
        """Record an item at a moment (it must not be recorded already)."""
        index = bisect_right(self.times, moment)
        self.times.insert(index, moment)
        self.names.insert(index, item)
        self.at[item] = moment

    def remove(self, item: str) -> None:
        """Forget an item."""
        moment = self.at.pop(item)
        index = bisect_left(self.times, moment)
        while self.names[index] != item:
            index += 1
        del self.times[index]
        del self.names[index]

    def drop_before(self, horizon: float) -> None:
        """Forget every item last seen before the horizon."""
        cut = bisect_left(self.times, horizon)
        if cut:
            for name in self.names[:cut]:
                del self.at[name]
            del self.times[:cut]
            del self.names[:cut]


class DistinctInWindow:
    """Distinct items per key (destinations per source) seen within a window.

    Each item keeps the latest flow start it was seen at; items further than
    the window plus lateness behind a key's newest are dropped. Keys are
    capped and expire when idle; items per key are capped too (the longest
    unseen go first). A source scanning thousands of destinations costs a
    few bisections per flow, not a walk over everything it reached.
    """

    def __init__(
        self,
        window: float,
        late: float,
        max_keys: int,
        max_items: int,
        counters: Counter[str],
    ) -> None:
        """Start empty."""
        self.window = window
        self.late = late
        self.max_items = max_items
        self.counters = counters
        self._keys: BoundedMap[str, _Seen] = BoundedMap(max_keys, counters, "sources")

    def __len__(self) -> int:
        """Return the number of keys tracked."""
        return len(self._keys)

    def add(self, key: str, item: str, moment: float) -> int:
        """Record an item at a moment; return the distinct items in its window."""
        seen = self._keys.setdefault(key, _Seen)
        before = seen.at.get(item)
        if before is None or before < moment:
            if before is not None:
                seen.remove(item)
            seen.insert(item, moment)
            if len(seen.at) > self.max_items:
                seen.remove(seen.names[0])
                self.counters["items_evicted"] += 1
        seen.drop_before(seen.times[-1] - self.window - self.late)
        return widest_count(seen.times, moment, self.window)

    def expire(self, now: float) -> None:
        """Drop keys idle for longer than the window plus lateness."""
        self._keys.expire(now, self.window + self.late)
