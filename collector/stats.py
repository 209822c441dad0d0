"""Counters for everything the collector receives, keeps and drops."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class Stats:
    """Counts by name, and decode errors by reason and by exporter.

    Nothing here logs: per-packet events are counted, and whoever reads the
    counters (the replay summary, the metrics endpoint) decides what to show.
    """

    counts: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    errors_by_exporter: Counter[tuple[str, str]] = field(default_factory=Counter)

    def error(self, exporter: str, reason: str, amount: int = 1) -> None:
        """Count a decode error by its reason slug."""
        self.errors[reason] += amount
        self.errors_by_exporter[(exporter, reason)] += amount

    def add(self, name: str, amount: int = 1) -> None:
        """Count a normal event such as a learned template."""
        self.counts[name] += amount
