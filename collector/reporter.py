"""Warnings about bad input, made from the counters once per tick.

The decoder counts every problem by exporter and reason and logs nothing per
packet. Once a second this turns what changed into warnings, which the log
filter then limits per exporter and reason.
"""

from __future__ import annotations

import logging

from collector.listener import Receiver
from collector.stats import Stats

log = logging.getLogger(__name__)


class InputReporter:
    """Logs new decode errors and denied exporters since the last report."""

    def __init__(self, stats: Stats, listener: Receiver | None = None) -> None:
        """Start from zero."""
        self.stats = stats
        self.listener = listener
        self._errors: dict[tuple[str, str], int] = {}
        self._denied: dict[str, int] = {}

    def report(self) -> None:
        """Warn about each (exporter, reason) that counted errors since last time."""
        errors = dict.copy(self.stats.errors_by_exporter)
        for (exporter, reason), count in errors.items():
            new = count - self._errors.get((exporter, reason), 0)
            if new > 0:
                log.warning(
                    "bad input",
                    extra={"exporter": exporter, "reason": reason, "count": new},
                )
        self._errors = errors

        if self.listener is None:
            return
        denied = dict.copy(self.listener.denied_sources)
        for source, count in denied.items():
            new = count - self._denied.get(source, 0)
            if new > 0:
                log.warning(
                    "datagrams from a host that is not an allowed exporter",
                    extra={"exporter": source, "reason": "not_allowed", "count": new},
                )
        self._denied = denied
