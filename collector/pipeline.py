"""The pipeline: export packets in, events out; the same for live and replay.

Only the source of datagrams and the clock differ between ``flowtrap run`` and
``flowtrap replay``: the live listener stamps datagrams with the wall clock, a
replay with the capture's own timestamps.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from collector.capture import Datagram
from collector.decoder import Batch, Decoder
from collector.layout import Layout, Row, convert
from collector.options import OptionsStore
from collector.records import TimeRules, build_flow
from collector.sinks import Sink
from detectors.base import Detector, Finding
from detectors.events import to_event
from detectors.windows import Window, Windows

log = logging.getLogger(__name__)

# How often (in clock seconds) open windows are checked for closing.
CLOSE_EVERY = 1.0
# How often held data and templates are checked for expiry.
EXPIRE_EVERY = 10.0


@dataclass(frozen=True, slots=True)
class _Filter:
    """The union of every detector's interest, resolved against one layout."""

    protocol: int | None
    dst_port: int | None
    protocols: frozenset[int] | None
    dst_ports: frozenset[int] | None
    impossible: bool


class Pipeline:
    """Decodes, detects, aggregates into windows and writes events."""

    def __init__(
        self,
        decoder: Decoder,
        detectors: Sequence[Detector],
        windows: Windows,
        sinks: Sequence[Sink],
        time_rules: TimeRules = TimeRules(),  # noqa: B008 - frozen, shared on purpose
    ) -> None:
        """Wire the parts; no I/O."""
        self.decoder = decoder
        self.stats = decoder.stats
        self.detectors = list(detectors)
        self.windows = windows
        self.sinks = list(sinks)
        self.time_rules = time_rules
        self.findings: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.detector_errors: Counter[str] = Counter()
        self.options = OptionsStore()
        self._protocols = self._union("protocols")
        self._dst_ports = self._union("dst_ports")
        self._last_close = 0.0
        self._last_expire = 0.0
        self._clock = 0.0

    def _union(self, name: str) -> frozenset[int] | None:
        """Union one interest field over every detector; None if any wants all."""
        values: set[int] = set()
        for detector in self.detectors:
            wanted = getattr(detector.interest, name)
            if wanted is None:
                return None
            values |= wanted
        return frozenset(values)

    def feed(self, datagram: Datagram) -> None:
        """Process one export packet."""
        decoded = self.decoder.decode(
            datagram.data, datagram.exporter, datagram.port, datagram.received
        )
        for batch in decoded.options:
            self.options.learn(batch)
        for batch in decoded.flows:
            self._detect(batch)
        self.advance(datagram.received)

    def advance(self, now: float) -> None:
        """Move the clock; close windows that are due."""
        if now > self._clock:
            self._clock = now
        if self._clock - self._last_close >= CLOSE_EVERY:
            self._last_close = self._clock
            self._emit(self.windows.close(_utc(self._clock)))
        if self._clock - self._last_expire >= EXPIRE_EVERY:
            self._last_expire = self._clock
            self.decoder.store.expire(self._clock)

    def flush(self) -> None:
        """Close every window and emit its event (shutdown, end of replay)."""
        self._emit(self.windows.flush())
        for sink in self.sinks:
            sink.close()

    def _filter(self, layout: Layout) -> _Filter:
        """Resolve the detectors' interest against a layout, once per layout."""
        cached = layout.cache.get("filter")
        if isinstance(cached, _Filter):
            return cached
        protocol = layout.index.get("protocolIdentifier")
        dst_port = layout.index.get("destinationTransportPort")
        impossible = (self._protocols is not None and protocol is None) or (
            self._dst_ports is not None and dst_port is None
        )
        resolved = _Filter(
            protocol, dst_port, self._protocols, self._dst_ports, impossible
        )
        layout.cache["filter"] = resolved
        return resolved

    def _candidates(self, batch: Batch) -> list[Row]:
        """Return the rows some detector may want, testing raw values only."""
        if not self.detectors:
            return []
        flt = self._filter(batch.layout)
        if flt.impossible:
            return []
        rows = batch.rows
        columns = batch.layout.columns
        if flt.protocols is not None and flt.protocol is not None:
            index, wanted = flt.protocol, flt.protocols
            if columns[index].direct:
                rows = [row for row in rows if row[index] in wanted]
            else:
                rows = [r for r in rows if convert(columns[index], r[index]) in wanted]
        if flt.dst_ports is not None and flt.dst_port is not None:
            index, wanted = flt.dst_port, flt.dst_ports
            if columns[index].direct:
                rows = [row for row in rows if row[index] in wanted]
            else:
                rows = [r for r in rows if convert(columns[index], r[index]) in wanted]
        return rows

    def _detect(self, batch: Batch) -> None:
        """Run every detector on the rows that pass the cheap filter."""
        context = batch.context
        options = self.options.get(context.exporter, context.domain)
        for row in self._candidates(batch):
            flow = build_flow(batch.layout, row, context, options, self.time_rules)
            for detector in self.detectors:
                interest = detector.interest
                if interest.protocols is not None and flow.protocol not in (
                    interest.protocols
                ):
                    continue
                if interest.dst_ports is not None and flow.dst_port not in (
                    interest.dst_ports
                ):
                    continue
                self._run(detector, flow)

    def _run(self, detector: Detector, flow: Any) -> None:
        """Evaluate one detector; its failure is counted, never spread."""
        try:
            findings = list(detector.evaluate(flow))
        except Exception:
            name = detector.rule.name
            self.detector_errors[name] += 1
            if self.detector_errors[name] == 1:
                log.exception("detector failed", extra={"detector": name})
            return
        for finding in findings:
            self._add(finding)

    def _add(self, finding: Finding) -> None:
        """Put one finding into its window."""
        self.findings[finding.rule.name] += 1
        self._emit(self.windows.add(finding))

    def _emit(self, windows: list[Window]) -> None:
        """Turn closed windows into events and hand them to every sink."""
        if not windows:
            return
        now = _utc(self._clock)
        for window in windows:
            event = to_event(window, now, self.windows.settings.seconds)
            self.events[window.rule.name] += 1
            for sink in self.sinks:
                sink.write(event)


def _utc(epoch: float) -> datetime:
    """Turn epoch seconds into an aware UTC datetime."""
    return datetime.fromtimestamp(epoch, UTC)
