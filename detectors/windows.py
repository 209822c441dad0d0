"""Windows: findings grouped by detector, key and time become one event each.

Windows are aligned to the epoch (a 60 s window starts on the minute) and placed
by the flow's start time, not its arrival, so the same traffic gives the same
windows and the same event ids whatever the order or the collector. A window
closes when the clock passes its end plus the allowed lateness.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from detectors.base import Finding, Rule
from detectors.networks import text
from schemas.flow import COUNTER_MAX, FlowRecord

# The namespace of flowtrap's name-based event ids; fixed forever, so that ids
# stay comparable across versions and collectors.
EVENT_NAMESPACE = uuid.UUID("6f0c8d1e-2b9a-5e43-9d1c-7a4f3b2e1c05")


@dataclass(frozen=True, slots=True)
class WindowSettings:
    """Window length, lateness and caps."""

    seconds: float = 60.0
    lateness: float = 120.0
    # An open window costs about 2 kB plus its sample; past this many the oldest
    # is closed early (its event is emitted, nothing is lost).
    max_open: int = 100_000
    sample_size: int = 5
    # Closed windows remembered so that a late finding gets a distinct id.
    remember_closed: int = 100_000


# Distinct destinations and related addresses counted per window; each costs
# about 100 bytes, and a window past the cap reports the cap as "at least".
MAX_DISTINCT = 1024


@dataclass(slots=True)
class Window:
    """The aggregate of one detector's findings for one key in one time bucket.

    ``first`` is the finding that opened the window; ``lead`` is the one with
    the highest severity (the first of those), which names the event.
    """

    rule: Rule
    key: tuple[str, ...]
    start: datetime
    first: Finding
    lead: Finding | None = None
    flows: int = 0
    packets: int = 0
    bytes: int = 0
    packets_scaled: int = 0
    bytes_scaled: int = 0
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    time_trusted: bool = True
    observers: set[str] = field(default_factory=set)
    destinations: set[str] = field(default_factory=set)
    related: set[str] = field(default_factory=set)
    sample: list[FlowRecord] = field(default_factory=list)
    reopened: int = 0

    def add(self, finding: Finding, sample_size: int) -> None:
        """Fold one finding into the aggregate."""
        if self.lead is None or (
            finding.effective_severity > self.lead.effective_severity
        ):
            self.lead = finding
        for address in finding.related:
            if len(self.related) < MAX_DISTINCT:
                self.related.add(address)
        if not finding.counts:
            return
        flow = finding.flow
        packets = flow.packets or 0
        octets = flow.bytes or 0
        scale = flow.sampling_interval or 1
        self.flows += 1
        # Sums saturate at 2**64 - 1: a JSON reader (and orjson) takes no more,
        # and a hostile exporter can send counters that would pass it.
        self.packets = min(self.packets + packets, COUNTER_MAX)
        self.bytes = min(self.bytes + octets, COUNTER_MAX)
        self.packets_scaled = min(self.packets_scaled + packets * scale, COUNTER_MAX)
        self.bytes_scaled = min(self.bytes_scaled + octets * scale, COUNTER_MAX)
        start = flow.start or flow.export_time
        end = flow.end or start
        if self.first_seen is None or start < self.first_seen:
            self.first_seen = start
        if self.last_seen is None or end > self.last_seen:
            self.last_seen = end
        self.time_trusted = self.time_trusted and flow.time_trusted
        self.observers.add(text(flow.exporter))
        if flow.dst_addr is not None and len(self.destinations) < MAX_DISTINCT:
            self.destinations.add(text(flow.dst_addr))
        if len(self.sample) < sample_size:
            self.sample.append(flow)

    def event_id(self) -> str:
        """Return the deterministic id: a UUIDv5 of detector, version, key, window."""
        name = "|".join(
            [self.rule.name, str(self.rule.version), *self.key, self.start.isoformat()]
        )
        if self.reopened:
            name += f"|late{self.reopened}"
        return str(uuid.uuid5(EVENT_NAMESPACE, name))


WindowKey = tuple[str, tuple[str, ...], datetime]


class Windows:
    """Open windows, closed by the clock; a bounded store."""

    def __init__(self, settings: WindowSettings | None = None) -> None:
        """Start with no windows; no I/O."""
        self.settings = settings or WindowSettings()
        self._open: OrderedDict[WindowKey, Window] = OrderedDict()
        self._closed: OrderedDict[WindowKey, int] = OrderedDict()
        self.early_closed = 0
        self.late_reopened = 0

    def __len__(self) -> int:
        """Return the number of open windows."""
        return len(self._open)

    def bucket(self, moment: datetime) -> datetime:
        """Return the start of the epoch-aligned window holding a moment."""
        seconds = self.settings.seconds
        epoch = moment.timestamp()
        return datetime.fromtimestamp(epoch - epoch % seconds, UTC)

    def add(self, finding: Finding) -> list[Window]:
        """Add a finding; return windows that had to close early to make room."""
        flow = finding.flow
        start = self.bucket(flow.start or flow.export_time)
        key: WindowKey = (finding.rule.name, finding.key, start)
        window = self._open.get(key)
        evicted: list[Window] = []
        if window is None:
            if len(self._open) >= self.settings.max_open:
                _, oldest = self._open.popitem(last=False)
                self._remember(oldest)
                self.early_closed += 1
                evicted.append(oldest)
            window = Window(finding.rule, finding.key, start, finding)
            window.reopened = self._closed.get(key, 0)
            if window.reopened:
                self.late_reopened += 1
            self._open[key] = window
        window.add(finding, self.settings.sample_size)
        return evicted

    def close(self, now: datetime) -> list[Window]:
        """Close every window whose end plus lateness the clock has passed."""
        horizon = now - timedelta(
            seconds=self.settings.seconds + self.settings.lateness
        )
        due = [key for key, window in self._open.items() if window.start <= horizon]
        return self._pop(due)

    def flush(self) -> list[Window]:
        """Close every open window (at shutdown or the end of a replay)."""
        return self._pop(list(self._open))

    def _pop(self, keys: list[WindowKey]) -> list[Window]:
        """Remove windows and return them in a stable order."""
        windows = [self._open.pop(key) for key in keys]
        for window in windows:
            self._remember(window)
        windows.sort(key=lambda w: (w.first_seen or w.start, w.rule.name, w.key))
        return windows

    def _remember(self, window: Window) -> None:
        """Remember a closed window so a late finding for it gets a new id."""
        key: WindowKey = (window.rule.name, window.key, window.start)
        self._closed[key] = window.reopened + 1
        self._closed.move_to_end(key)
        while len(self._closed) > self.settings.remember_closed:
            self._closed.popitem(last=False)
