"""The pipeline: export packets in, events out; the same for live and replay.

Only the source of datagrams and the clock differ between ``flowtrap run`` and
``flowtrap replay``: the live listener stamps datagrams with the wall clock, a
replay with the capture's own timestamps.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from collector import state as state_file
from collector.capture import Datagram
from collector.decoder import Batch, Decoder
from collector.layout import Layout, Row
from collector.options import OptionsStore
from collector.records import TimeRules, build_flow
from collector.sieve import Sieve
from collector.sinks import Sink
from detectors.base import Detector, Finding, SourceWatch, Ticking
from detectors.events import event_document
from detectors.windows import Window, Windows
from schemas.flow import FlowRecord

log = logging.getLogger(__name__)

# How often (in clock seconds) open windows are checked for closing.
CLOSE_EVERY = 1.0
# How often held data and templates are checked for expiry.
EXPIRE_EVERY = 10.0

# Records kept for detectors that watch source addresses to look back over, so
# a flow that arrived before the flow that made its source interesting (a TCP
# callback exported before its UDP probe) is still seen. Records are kept as
# their flowset's bytes (30-100 bytes each) and searched only when a source
# becomes watched. Past the cap the oldest batches go, counted as
# lookback_rows_evicted.
LOOKBACK_MAX_ROWS = 100_000

# Closed windows waiting to be written as events, past which they are written
# at once whatever the outputs can take (bounds memory in a flood of findings;
# what an output cannot queue it drops and counts).
MAX_PENDING_EVENTS = 100_000
# How long writing waits for an output's queue to have room, where writing
# may wait (a replay, shutdown), before writing anyway.
ROOM_WAIT_SECONDS = 30.0

# A failing detector logs its first error, then at most one line per this many
# clock seconds with the count since.
ERROR_LOG_EVERY = 60.0


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
        self._watches = [
            d.interest.sources for d in self.detectors if d.interest.sources is not None
        ]
        self._lookback: deque[tuple[float, Batch]] = deque()
        self._lookback_rows = 0
        self._lookback_seconds = max(
            (w.lookback_seconds for w in self._watches), default=0.0
        )
        self._error_logged: dict[str, tuple[float, int]] = {}
        self._last_close = 0.0
        self._last_expire = 0.0
        self._state: tuple[Path, float] | None = None
        self._last_save = 0.0
        self._clock = 0.0
        # Closed windows not yet written. With a ``wake`` hook (the live
        # collector) they are written in slices between reads of the sockets,
        # so a burst of events never stalls decoding; without one, at once.
        self.pending: deque[tuple[Window, datetime]] = deque()
        self.wake: Callable[[], None] | None = None
        # Called with each detector's newly watched source addresses (by its
        # index) before they are looked back for; worker processes hold the
        # rows to look back over when there are workers.
        self.on_fresh: Callable[[int, set[bytes]], None] | None = None
        # Called with every flow record some detector wanted (a cluster
        # publishes them to the other nodes); None on a single collector.
        self.observer: Callable[[FlowRecord], None] | None = None

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
        self.stats.begin(datagram.exporter)
        decoded = self.decoder.decode(
            datagram.data, datagram.exporter, datagram.port, datagram.received
        )
        self.stats.end()
        for batch in decoded.options:
            self.options.learn(batch)
        for batch in decoded.flows:
            self._detect(batch)
            if self._watches:
                self._look_back(batch, datagram.received)
        # Everything advance() does is due at most once a clock second; the
        # common case is only this comparison.
        if datagram.received - self._last_close >= CLOSE_EVERY:
            self.advance(datagram.received)
        elif datagram.received > self._clock:
            self._clock = datagram.received

    def advance(self, now: float) -> None:
        """Move the clock; close windows that are due."""
        if now > self._clock:
            self._clock = now
        if self._clock - self._last_close >= CLOSE_EVERY:
            self._last_close = self._clock
            moment = _utc(self._clock)
            for detector in self.detectors:
                if isinstance(detector, Ticking):
                    detector.tick(moment)
            self._emit(self.windows.close(moment))
        if self._clock - self._last_expire >= EXPIRE_EVERY:
            self._last_expire = self._clock
            self.decoder.store.expire(self._clock)
        if self._state is not None and self._clock - self._last_save >= self._state[1]:
            self.save_state()

    def keep_state(self, path: Path, every: float) -> None:
        """Keep templates and options in a state file, saved every few seconds."""
        self._state = (path, every)

    def load_state(self) -> int:
        """Restore saved templates and options (at start, before any datagram).

        The files a run with ``--workers`` saved beside it are read too, so a
        change of the number of workers keeps what was learned.
        """
        if self._state is None:
            return 0
        self._last_save = self._clock
        return state_file.load(self._state[0], self.decoder, self.options)

    def restore_state(
        self, states: list[state_file.StateFile], keep: Callable[[str], bool]
    ) -> int:
        """Restore state read before this process started, for some exporters."""
        self._last_save = self._clock
        return state_file.restore(states, self.decoder, self.options, keep)

    def save_state(self) -> None:
        """Write templates and options atomically; a failure is logged, not fatal."""
        if self._state is None:
            return
        self._last_save = self._clock
        try:
            state_file.save(self._state[0], self.decoder, self.options)
        except OSError as error:
            log.warning(
                "state file not saved",
                extra={"path": str(self._state[0]), "error": error.strerror},
            )

    def flush(self) -> None:
        """Close every window and emit its event (shutdown, end of replay)."""
        self._emit(self.windows.flush())
        self._write_all()
        for sink in self.sinks:
            sink.close()

    def _sieve(self, layout: Layout) -> Sieve:
        """Resolve the detectors' interest against a layout, once per layout.

        Layouts are shared (v5's by every decoder in the process), so the
        sieve is kept under the interest it was built for.
        """
        key = ("sieve", self._protocols, self._dst_ports)
        cached = layout.cache.get(key)
        if isinstance(cached, Sieve):
            return cached
        sieve = Sieve.build(layout, self._protocols, self._dst_ports)
        layout.cache[key] = sieve
        return sieve

    def _candidates(self, batch: Batch) -> list[Row]:
        """Return the rows some detector may want, testing raw values only."""
        if not self.detectors:
            return []
        sieve = self._sieve(batch.layout)
        chosen = sieve.matching(batch)
        for watch in self._watches:
            if watch.members:
                extra = sieve.watched(batch, watch.protocols, watch.members)
                if extra:
                    chosen = sorted(set(chosen).union(extra))
        return [batch.row(i) for i in chosen]

    def _look_back(self, batch: Batch, received: float) -> None:
        """Keep a batch; give newly watched sources the kept rows they missed."""
        self._lookback.append((received, batch))
        self._lookback_rows += batch.count
        horizon = received - self._lookback_seconds
        while self._lookback and (
            self._lookback_rows > LOOKBACK_MAX_ROWS or self._lookback[0][0] < horizon
        ):
            kept_at, old = self._lookback.popleft()
            self._lookback_rows -= old.count
            if kept_at >= horizon:
                self.stats.add("lookback_rows_evicted", old.count)
        self._replay_fresh()

    def _replay_fresh(self) -> None:
        """Give every detector's newly watched sources the kept rows they missed."""
        if not any(watch.fresh for watch in self._watches):
            return
        for index, detector in enumerate(self.detectors):
            watch = detector.interest.sources
            if watch is not None and watch.fresh:
                fresh = watch.take_fresh()
                if self.on_fresh is not None:
                    self.on_fresh(index, fresh)
                self._replay(detector, watch, fresh)

    def _replay(
        self, detector: Detector, watch: SourceWatch, fresh: set[bytes]
    ) -> None:
        """Run one detector on kept rows from newly watched sources, by start time."""
        flows = []
        for _, batch in self._lookback:
            context = batch.context
            options = self.options.get(context.exporter, context.domain)
            sieve = self._sieve(batch.layout)
            for index in sieve.watched(batch, watch.protocols, fresh):
                row = batch.row(index)
                flow = build_flow(batch.layout, row, context, options, self.time_rules)
                flows.append(flow)
        flows.sort(key=lambda flow: flow.start or flow.export_time)
        for flow in flows:
            # A row its protocol and port let through was delivered already.
            if not detector.interest.wants_by_port(flow):
                self._run(detector, flow)
                if self.observer is not None:
                    self.observer(flow)

    def _detect(self, batch: Batch) -> None:
        """Run every detector on the rows that pass the cheap filter."""
        context = batch.context
        options = self.options.get(context.exporter, context.domain)
        for row in self._candidates(batch):
            flow = build_flow(batch.layout, row, context, options, self.time_rules)
            wanted = False
            for detector in self.detectors:
                if detector.interest.wants(flow):
                    wanted = True
                    self._run(detector, flow)
            if wanted and self.observer is not None:
                self.observer(flow)

    def observe(self, flows: Iterable[FlowRecord], local: bool = False) -> None:
        """Run the detectors on flow records decoded elsewhere.

        They join the same detector state as local ones, so a probe decoded
        elsewhere and a callback decoded here correlate; a source they make
        watched gets the kept local rows it missed. ``local`` flows (from this
        collector's own worker processes) also go to the observer, as flows
        decoded here do; another node's flows never go back out.
        """
        observer = self.observer if local else None
        for flow in flows:
            wanted = False
            for detector in self.detectors:
                if detector.interest.wants(flow):
                    wanted = True
                    self._run(detector, flow)
            if wanted and observer is not None:
                observer(flow)
        self._replay_fresh()

    def _run(self, detector: Detector, flow: Any) -> None:
        """Evaluate one detector; its failure is counted, never spread."""
        try:
            findings = list(detector.evaluate(flow))
        except Exception:
            extra = self._failed(detector.rule.name)
            if extra is not None:
                log.exception("detector failed", extra=extra)
            return
        for finding in findings:
            self._add(finding)

    def _failed(self, name: str) -> dict[str, Any] | None:
        """Count a detector's failure; say what to log: the first, then one a minute."""
        self.detector_errors[name] += 1
        total = self.detector_errors[name]
        logged_at, count_then = self._error_logged.get(name, (0.0, 0))
        if count_then and self._clock - logged_at < ERROR_LOG_EVERY:
            return None
        self._error_logged[name] = (self._clock, total)
        return {"detector": name, "errors": total, "since_last": total - count_then}

    def detector_counters(self) -> dict[str, dict[str, int]]:
        """Return each detector's state counters (evictions, suppressions)."""
        counters: dict[str, dict[str, int]] = {}
        for detector in self.detectors:
            values = getattr(detector, "counters", None)
            if isinstance(values, Counter) and values:
                counters[detector.rule.name] = dict(sorted(values.items()))
        return counters

    def _add(self, finding: Finding) -> None:
        """Put one finding into its window."""
        self.findings[finding.rule.name] += 1
        self._emit(self.windows.add(finding))

    def _emit(self, windows: list[Window]) -> None:
        """Queue closed windows as events; write them now when nothing waits."""
        if not windows:
            return
        now = _utc(self._clock)
        was_empty = not self.pending
        self.pending.extend((window, now) for window in windows)
        if self.wake is None:
            self._write_all()
            return
        if len(self.pending) > MAX_PENDING_EVENTS:
            self.write_pending(len(self.pending) - MAX_PENDING_EVENTS, force=True)
        if was_empty:
            self.wake()

    def _write_all(self) -> None:
        """Write every waiting event, waiting for the outputs to make room."""
        deadline = time.monotonic() + ROOM_WAIT_SECONDS
        while self.pending:
            before = len(self.pending)
            if self.write_pending() == before:
                if time.monotonic() >= deadline:
                    self.write_pending(force=True)
                    return
                time.sleep(0.01)

    def room(self) -> int | None:
        """Return how many events the sinks take now (None: no limit)."""
        rooms = []
        for sink in self.sinks:
            # Sinks without queues (tests, counting) take everything.
            room = getattr(sink, "room", None)
            if room is not None and (value := room()) is not None:
                rooms.append(value)
        return min(rooms) if rooms else None

    def write_pending(self, limit: int | None = None, force: bool = False) -> int:
        """Write up to ``limit`` waiting events (default all); return how many wait.

        Unless forced, no more than the sinks have room for: a burst waits
        here rather than overflow an output's queue.
        """
        pending = self.pending
        count = len(pending) if limit is None else min(limit, len(pending))
        room = None if force else self.room()
        if room is not None:
            count = min(count, max(room, 0))
        seconds = self.windows.settings.seconds
        for _ in range(count):
            window, now = pending.popleft()
            event = event_document(window, now, seconds)
            self.events[window.rule.name] += 1
            for sink in self.sinks:
                sink.write(event)
        return len(pending)


def _utc(epoch: float) -> datetime:
    """Turn epoch seconds into an aware UTC datetime."""
    return datetime.fromtimestamp(epoch, UTC)
