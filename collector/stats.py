"""Counters for everything the collector receives, keeps and drops."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# Exporters that get counts of their own; the rest share OTHER_EXPORTERS. Each
# costs a Counter of about twenty names (some 2 kB), and a metrics label set.
MAX_LABELLED_EXPORTERS = 1024
OTHER_EXPORTERS = "other"


@dataclass(slots=True)
class Stats:
    """Counts by name (overall and by exporter), and decode errors by reason.

    Nothing here logs: per-packet events are counted, and whoever reads the
    counters (the replay summary, the metrics endpoint) decides what to show.
    The pipeline calls ``begin`` and ``end`` around the decoding of each export
    packet, so every count made meanwhile is also kept under its exporter
    without passing the address down. Counts made elsewhere (expiry on the
    clock) go under the exporter named in ``add``, or under "" when none is.
    """

    counts: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    errors_by_exporter: Counter[tuple[str, str]] = field(default_factory=Counter)
    by_exporter: dict[str, Counter[str]] = field(default_factory=dict)
    current: Counter[str] = field(default_factory=Counter)

    def begin(self, exporter: str) -> None:
        """Attribute the counts that follow to one exporter (once per packet)."""
        self.current = self._of(exporter)

    def end(self) -> None:
        """Stop attributing counts to the packet's exporter."""
        self.current = self._of("")

    def _of(self, exporter: str) -> Counter[str]:
        """Return an exporter's counts, sharing OTHER_EXPORTERS past the cap."""
        counts = self.by_exporter.get(exporter)
        if counts is None:
            if len(self.by_exporter) >= MAX_LABELLED_EXPORTERS:
                exporter = OTHER_EXPORTERS
            counts = self.by_exporter.setdefault(exporter, Counter())
        return counts

    def error(self, exporter: str, reason: str, amount: int = 1) -> None:
        """Count a decode error by its reason slug (exporters past the cap pooled)."""
        self.errors[reason] += amount
        self.error_by_exporter(exporter, reason, amount)

    def merge(
        self,
        counts: Counter[str],
        errors: Counter[str],
        errors_by_exporter: Counter[tuple[str, str]],
        by_exporter: dict[str, Counter[str]],
    ) -> None:
        """Add counts made in a worker process; exporters pooled past the cap."""
        self.counts.update(counts)
        self.errors.update(errors)
        for (exporter, reason), amount in errors_by_exporter.items():
            self.error_by_exporter(exporter, reason, amount)
        for exporter, values in by_exporter.items():
            self._of(exporter).update(values)

    def error_by_exporter(self, exporter: str, reason: str, amount: int) -> None:
        """Count an error under its exporter only (the overall count is done)."""
        if exporter not in self.by_exporter and (
            len(self.by_exporter) >= MAX_LABELLED_EXPORTERS
        ):
            # Spoofed sources must not become labels (or log lines) without end.
            exporter = OTHER_EXPORTERS
        self.errors_by_exporter[(exporter, reason)] += amount

    def add(self, name: str, amount: int = 1, exporter: str | None = None) -> None:
        """Count a normal event such as a learned template."""
        self.counts[name] += amount
        counts = self.current if exporter is None else self._of(exporter)
        counts[name] += amount
