"""Sequence numbers per (exporter, version, observation domain): loss and resets.

What the number counts differs by version: v5 counts flow records, v9 export
packets (RFC 3954 §5.1), IPFIX data records (RFC 7011 §3.1). A small step back
is a reordered packet; a large jump either way is an exporter restart (B06):
neither is loss.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass

_WRAP = 1 << 32

# Streams tracked; one entry is about 150 bytes.
MAX_STREAMS = 100_000


@dataclass(frozen=True, slots=True)
class SequenceRules:
    """How far a sequence number may move before it counts as a reset."""

    # A forward gap beyond this many units is a restart, not loss.
    max_gap: int = 1_000_000
    # A step back within this many units is reordering.
    reorder_window: int = 1_000


StreamKey = tuple[str, int, int]


class SequenceTracker:
    """Expected next sequence number per stream, and what went missing."""

    def __init__(self, rules: SequenceRules | None = None) -> None:
        """Start with no streams."""
        self.rules = rules or SequenceRules()
        self._next: OrderedDict[StreamKey, int | None] = OrderedDict()
        self.lost: Counter[str] = Counter()
        self.resets: Counter[str] = Counter()
        self.reordered: Counter[str] = Counter()

    def observe(
        self, exporter: str, version: int, domain: int, sequence: int, units: int | None
    ) -> int:
        """Check one export packet's number; return the units lost before it.

        ``units`` is what this packet adds to the count, or None when it cannot
        be known (an IPFIX message with data still waiting for its template):
        the next packet then re-synchronises instead of reporting loss.
        """
        key = (exporter, version, domain)
        expected = self._next.get(key)
        lost = 0
        if expected is not None:
            gap = (sequence - expected) % _WRAP
            if gap == 0:
                pass
            elif gap <= self.rules.max_gap:
                lost = gap
                self.lost[exporter] += gap
            elif _WRAP - gap <= self.rules.reorder_window:
                self.reordered[exporter] += 1
                return 0
            else:
                self.resets[exporter] += 1
        elif key not in self._next and len(self._next) >= MAX_STREAMS:
            self._next.popitem(last=False)

        self._next[key] = None if units is None else (sequence + units) % _WRAP
        self._next.move_to_end(key)
        return lost
