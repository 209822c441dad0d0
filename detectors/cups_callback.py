"""The CUPS callback: a probed internal host connecting out to the prober.

A CVE-2024-47176 probe is one UDP datagram to port 631 naming a printer URL;
a vulnerable cups-browsed then opens TCP to that URL to fetch the printer's
attributes. On flow records that is UDP/631 from X to V, then TCP from V to X
(any port: the URL picks it, and IPP without a port means 631). The URL may
name another host, so TCP from V to a new external address shortly after a
probe is a weaker variant.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydantic import Field

from detectors.base import (
    DetectionContext,
    Finding,
    Interest,
    IPAddress,
    Rule,
    SourceWatch,
)
from detectors.cups import (
    CHAIN_CVES,
    CUPS_PORT,
    HIGH,
    INITIAL_ACCESS,
    MEDIUM,
    REFERENCE,
    T1133,
    T1190,
    TAGS,
    TCP,
    UDP,
    is_udp_631,
    started,
)
from detectors.registry import register
from detectors.settings import Configured, DetectorSettings
from detectors.state import BoundedMap
from schemas.flow import FlowRecord

# Per probed host: the probes and the connections kept to correlate them. A
# probe costs about 1 kB with its flow record, a connection the same, so a
# host costs at most about 80 kB and max_tracked hosts bound the total.
MAX_PROBES_PER_HOST = 16
MAX_CONNECTIONS_PER_HOST = 64

# Below this a port is a service's, so a flow from it to a high port is the
# reply side of a connection someone else opened.
_SERVICE_PORTS = 1024


class CallbackSettings(DetectorSettings):
    """Settings of ``cups_browsed_callback``."""

    window_seconds: float = Field(
        default=900.0,
        gt=0,
        description="How long after a probe a connection to the prober counts, "
        "by flow start times.",
    )
    new_address_seconds: float = Field(
        default=60.0,
        ge=0,
        description="How long after a probe a connection to a new external "
        "address counts as the medium-severity variant; 0 turns it off.",
    )
    new_address_severity: int = Field(default=MEDIUM, ge=0, le=100)
    skew_seconds: float = Field(
        default=0.5,
        ge=0,
        description="How far a connection may seem to start before its probe "
        "(exporter rounding) and still follow it; a connection that truly "
        "started earlier is not a callback.",
    )


@dataclass(slots=True)
class _Probe:
    """One UDP/631 datagram that reached the host."""

    source: IPAddress
    start: float
    trusted: bool


@dataclass(slots=True)
class _Connection:
    """One TCP flow the host opened to an external address."""

    flow: FlowRecord
    destination: IPAddress
    start: float
    trusted: bool
    reported: int = 0

    @property
    def identity(self) -> tuple[str, int | None, int | None, float]:
        """Return what tells this flow from another of the same host."""
        return (
            str(self.destination),
            self.flow.src_port,
            self.flow.dst_port,
            self.start,
        )


@dataclass(slots=True)
class _Host:
    """What one probed internal host received and opened."""

    probes: list[_Probe] = field(default_factory=list)
    connections: list[_Connection] = field(default_factory=list)
    seen: set[tuple[str, int | None, int | None, float]] = field(default_factory=set)


@register("cups_browsed_callback")
class Callback(Configured[CallbackSettings]):
    """TCP from a probed internal host to its prober (or to a new external host)."""

    rule = Rule(
        name="cups_browsed_callback",
        version=1,
        description=(
            "An internal host that received a UDP/631 probe then opened TCP to "
            "the prober: the printer-attribute fetch of a successful "
            "CVE-2024-47176 trigger."
        ),
        reference=REFERENCE,
        severity=HIGH,
        risk_score=float(HIGH),
        tactics=(INITIAL_ACCESS,),
        techniques=(T1133, T1190),
        cves=CHAIN_CVES,
        tags=(*TAGS, "callback"),
    )
    settings_model = CallbackSettings

    def __init__(self, context: DetectionContext) -> None:
        """Keep settings, the probed hosts, and the watch on their TCP flows."""
        self.configure(context, CallbackSettings)
        self.watch = SourceWatch(frozenset({TCP}), self.settings.window_seconds)
        self.interest = Interest(
            protocols=frozenset({UDP}),
            dst_ports=frozenset({CUPS_PORT}),
            sources=self.watch,
        )
        self.hosts: BoundedMap[IPAddress, _Host] = BoundedMap(
            self.settings.max_tracked, self.counters, "hosts"
        )

    def evaluate(self, flow: FlowRecord) -> Iterable[Finding]:
        """Record a probe or a connection, and correlate it with the other kind."""
        if flow.src_addr is None or flow.dst_addr is None:
            return ()
        if self.allowlist.allows(flow):
            self.counters["allowlisted"] += 1
            return ()
        if is_udp_631(flow):
            return self._probe(flow, flow.src_addr, flow.dst_addr)
        if flow.protocol == TCP:
            return self._connection(flow, flow.src_addr, flow.dst_addr)
        return ()

    def _probe(
        self, flow: FlowRecord, source: IPAddress, host: IPAddress
    ) -> list[Finding]:
        """Start watching a probed host; match connections it already opened."""
        if not self.networks.is_external_unicast(source):
            return []
        if not self.networks.is_internal_unicast(host):
            return []
        state = self.hosts.setdefault(host, _Host, self._evicted)
        probe = _Probe(source, started(flow), flow.time_trusted)
        if any(
            p.source == probe.source and p.start == probe.start for p in state.probes
        ):
            return []
        state.probes.append(probe)
        if len(state.probes) > MAX_PROBES_PER_HOST:
            state.probes.pop(0)
            self.counters["probes_dropped"] += 1
        self.watch.add(host)
        findings = [self._match(host, state, c) for c in state.connections]
        return [f for f in findings if f is not None]

    def _connection(
        self, flow: FlowRecord, host: IPAddress, destination: IPAddress
    ) -> list[Finding]:
        """Keep a probed host's connection out and match it with its probes."""
        # A connection does not keep its host watched: only probes do.
        state = self.hosts.get(host)
        if state is None or not self.networks.is_external_unicast(destination):
            return []
        src_port, dst_port = flow.src_port, flow.dst_port
        if (
            src_port is not None
            and dst_port is not None
            and src_port < _SERVICE_PORTS <= dst_port
        ):
            # The reply side of a connection someone opened to the host.
            return []
        connection = _Connection(flow, destination, started(flow), flow.time_trusted)
        if connection.identity in state.seen:
            # Seen already: a look back may deliver a flow a second time.
            return []
        state.seen.add(connection.identity)
        state.connections.append(connection)
        if len(state.connections) > MAX_CONNECTIONS_PER_HOST:
            dropped = state.connections.pop(0)
            state.seen.discard(dropped.identity)
            self.counters["connections_dropped"] += 1
        finding = self._match(host, state, connection)
        return [] if finding is None else [finding]

    def _match(
        self, host: IPAddress, state: _Host, connection: _Connection
    ) -> Finding | None:
        """Return a finding when a connection follows one of the host's probes."""
        best: tuple[int, _Probe] | None = None
        for probe in state.probes:
            severity = self._grade(state, probe, connection)
            if severity and (best is None or severity > best[0]):
                best = (severity, probe)
        if best is None or best[0] <= connection.reported:
            return None
        severity, probe = best
        first = connection.reported == 0
        connection.reported = severity
        return self._finding(host, connection, probe, severity, first)

    def _grade(self, state: _Host, probe: _Probe, connection: _Connection) -> int:
        """Return the severity a probe gives a connection, or 0."""
        delay = connection.start - probe.start
        ordered = probe.trusted and connection.trusted
        skew = self.settings.skew_seconds

        def within(limit: float) -> bool:
            # Untrusted times are export times: order is unknown, so the
            # window applies both ways around them.
            return -skew <= delay <= limit if ordered else abs(delay) <= limit

        if connection.destination == probe.source:
            return self.rule.severity if within(self.settings.window_seconds) else 0
        limit = self.settings.new_address_seconds
        if not limit or not within(limit):
            return 0
        if any(connection.destination == p.source for p in state.probes):
            return 0
        if ordered and any(
            c.destination == connection.destination
            and c.trusted
            and c.start < probe.start - skew
            for c in state.connections
        ):
            return 0
        return self.settings.new_address_severity

    def _finding(
        self,
        host: IPAddress,
        connection: _Connection,
        probe: _Probe,
        severity: int,
        first: bool,
    ) -> Finding:
        """Build the finding for a connection that followed a probe."""
        destination = connection.destination
        port = connection.flow.dst_port
        delay = connection.start - probe.start
        trusted = probe.trusted and connection.trusted
        # Untrusted times are export times, so only "near" can be said.
        when = f"{delay:.1f} s after" if trusted else "near the time"
        if destination == probe.source:
            message = (
                f"{host} opened TCP to {destination} port {port} {when} "
                f"{destination} sent it a UDP/631 probe, as a successful "
                "CVE-2024-47176 trigger does"
            )
        else:
            message = (
                f"{host} opened TCP to new external host {destination} port {port} "
                f"{when} {probe.source} sent it a UDP/631 probe, which may have "
                "named that host as its printer"
            )
        return Finding(
            self.rule,
            (str(host), str(destination)),
            connection.flow,
            message,
            severity=severity,
            risk_score=float(severity),
            details={
                "probe_source": str(probe.source),
                "probe_start": _iso(probe.start),
                "delay_seconds": round(delay, 3),
                "times_trusted": trusted,
            },
            related=(str(probe.source),),
            counts=first,
        )

    def _evicted(self, host: IPAddress, state: _Host) -> None:
        """Stop watching a host whose state expired or made room for another."""
        self.watch.discard(host)

    def tick(self, now: datetime) -> None:
        """Forget hosts with no probe or connection for the window plus lateness."""
        idle = self.settings.window_seconds + self.settings.late_seconds
        self.hosts.expire(now.timestamp(), idle, self._evicted)


def _iso(epoch: float) -> str:
    """Return epoch seconds as an ISO 8601 UTC time."""
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")
