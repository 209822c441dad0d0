"""CUPS cups-browsed detectors (CVE-2024-47176): UDP/631 leaving and entering.

cups-browsed listens on UDP/631 and, before the fix, fetched printer attributes
from any URL a browse packet named. UDP/631 leaving the network is a host
inside trying to trigger the flaw elsewhere (or a misconfigured browse); UDP/631
arriving from outside is a probe. The callback and the internal fan-out
detectors live in ``cups_callback.py`` and ``cups_fanout.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from pydantic import Field

from detectors.base import Attack, DetectionContext, Finding, Interest, Rule
from detectors.networks import text
from detectors.registry import register
from detectors.settings import Configured, DetectorSettings
from detectors.state import MAX_DESTINATIONS_PER_SOURCE, BoundedMap, DistinctInWindow
from schemas.flow import FlowRecord

CUPS_PORT = 631
TCP = 6
UDP = 17

# Severity levels, on the 0-100 scale SIEMs map to low / medium / high.
LOW = 21
MEDIUM = 47
HIGH = 73

BROWSED_CVES = ("CVE-2024-47176",)
# The chain a successful trigger opens: cups-browsed, libcupsfilters, libppd,
# cups-filters (foomatic-rip).
CHAIN_CVES = ("CVE-2024-47176", "CVE-2024-47076", "CVE-2024-47175", "CVE-2024-47177")
REFERENCE = "https://nvd.nist.gov/vuln/detail/CVE-2024-47176"
TAGS = ("cups", "cve-2024-47176")

RECONNAISSANCE = Attack("TA0043", "Reconnaissance")
INITIAL_ACCESS = Attack("TA0001", "Initial Access")
DISCOVERY = Attack("TA0007", "Discovery")
LATERAL_MOVEMENT = Attack("TA0008", "Lateral Movement")
T1133 = Attack("T1133", "External Remote Services")
T1190 = Attack("T1190", "Exploit Public-Facing Application")
T1595_002 = Attack("T1595.002", "Vulnerability Scanning")
T1046 = Attack("T1046", "Network Service Discovery")
T1210 = Attack("T1210", "Exploitation of Remote Services")

UDP_631 = Interest(protocols=frozenset({UDP}), dst_ports=frozenset({CUPS_PORT}))


def is_udp_631(flow: FlowRecord) -> bool:
    """Return True for UDP to port 631."""
    return flow.protocol == UDP and flow.dst_port == CUPS_PORT


def started(flow: FlowRecord) -> float:
    """Return a flow's start (its export time when it has none) in epoch seconds."""
    return (flow.start or flow.export_time).timestamp()


class InternalExternalSettings(DetectorSettings):
    """Settings of ``cups_browsed_internal_external``."""

    escalate_destinations: int = Field(
        default=10,
        ge=2,
        description="External destinations one source reaches within "
        "escalate_window_seconds that escalate it to one high-severity event.",
    )
    escalate_window_seconds: float = Field(default=300.0, gt=0)
    escalated_severity: int = Field(default=HIGH, ge=0, le=100)


@register("cups_browsed_internal_external")
class InternalToExternal(Configured[InternalExternalSettings]):
    """UDP to port 631 from an internal host to an external unicast address."""

    rule = Rule(
        name="cups_browsed_internal_external",
        version=2,
        description=(
            "An internal host sent UDP to port 631 (cups-browsed) on an external "
            "host, which may be an attempt to trigger CVE-2024-47176 there."
        ),
        reference=REFERENCE,
        severity=MEDIUM,
        risk_score=float(MEDIUM),
        tactics=(INITIAL_ACCESS,),
        techniques=(T1133, T1190),
        cves=BROWSED_CVES,
        tags=TAGS,
    )
    interest = UDP_631
    settings_model = InternalExternalSettings

    def __init__(self, context: DetectionContext) -> None:
        """Keep the network classifier, settings and per-source state."""
        self.configure(context, InternalExternalSettings)
        self.reached = DistinctInWindow(
            self.settings.escalate_window_seconds,
            self.settings.late_seconds,
            max_keys=self.settings.max_tracked,
            max_items=max(
                4 * self.settings.escalate_destinations, MAX_DESTINATIONS_PER_SOURCE
            ),
            counters=self.counters,
        )

    def evaluate(self, flow: FlowRecord) -> Iterable[Finding]:
        """Flag internal → external unicast UDP/631; escalate a wide source."""
        src, dst = flow.src_addr, flow.dst_addr
        if not is_udp_631(flow) or src is None or dst is None:
            return ()
        # Browse packets (631 → 631) go to a broadcast or internal address, and
        # those are neither external nor unicast, so they never pass here.
        if not self.networks.is_internal(src):
            return ()
        if not self.networks.is_external_unicast(dst):
            return ()
        if self.allowlist.allows(flow):
            self.counters["allowlisted"] += 1
            return ()

        source, target = text(src), text(dst)
        reached = self.reached.add(source, target, started(flow))
        if reached >= self.settings.escalate_destinations:
            seconds = self.settings.escalate_window_seconds
            message = (
                f"{source} sent UDP to cups-browsed port 631 on {reached} external "
                f"hosts within {seconds:g} s; check it for CVE-2024-47176 scanning"
            )
            return (
                Finding(
                    self.rule,
                    (source,),
                    flow,
                    message,
                    severity=self.settings.escalated_severity,
                    risk_score=float(self.settings.escalated_severity),
                    details={"external_destinations": reached},
                ),
            )
        message = (
            f"{source} sent UDP to cups-browsed port 631 on external host {target}; "
            "check it for CVE-2024-47176 scanning"
        )
        return (Finding(self.rule, (source, target), flow, message),)

    def tick(self, now: datetime) -> None:
        """Forget sources quiet for the escalation window plus lateness."""
        self.reached.expire(now.timestamp())


class ExternalInternalSettings(DetectorSettings):
    """Settings of ``cups_browsed_external_internal``."""

    suppress_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="After a source's first probe, its further probes are counted "
        "but raise no event for this long.",
    )
    burst_seconds: float = Field(
        default=60.0,
        ge=0,
        description="Probes within this of a source's first one join its event.",
    )


@register("cups_browsed_external_internal")
class ExternalToInternal(Configured[ExternalInternalSettings]):
    """UDP to port 631 from an external host to an internal unicast address."""

    rule = Rule(
        name="cups_browsed_external_internal",
        version=1,
        description=(
            "An external host sent UDP to port 631 (cups-browsed) on an internal "
            "host: a probe that triggers CVE-2024-47176 where cups-browsed is "
            "exposed and unpatched."
        ),
        reference=REFERENCE,
        severity=LOW,
        risk_score=float(LOW),
        tactics=(RECONNAISSANCE, INITIAL_ACCESS),
        techniques=(T1595_002, T1190),
        cves=BROWSED_CVES,
        tags=(*TAGS, "probe"),
    )
    interest = UDP_631
    settings_model = ExternalInternalSettings

    def __init__(self, context: DetectionContext) -> None:
        """Keep the network classifier, settings and per-source suppression."""
        self.configure(context, ExternalInternalSettings)
        # Source → start of its current burst; one entry costs about 200 bytes.
        self.bursts: BoundedMap[str, float] = BoundedMap(
            self.settings.max_tracked, self.counters, "sources"
        )

    def evaluate(self, flow: FlowRecord) -> Iterable[Finding]:
        """Flag external → internal unicast UDP/631, once per source per period."""
        src, dst = flow.src_addr, flow.dst_addr
        if not is_udp_631(flow) or src is None or dst is None:
            return ()
        if not self.networks.is_external_unicast(src):
            return ()
        if not self.networks.is_internal_unicast(dst):
            return ()
        if self.allowlist.allows(flow):
            self.counters["allowlisted"] += 1
            return ()
        source = text(src)
        if self._suppressed(source, started(flow)):
            self.counters["suppressed"] += 1
            return ()
        message = (
            f"external host {source} sent UDP to cups-browsed port 631 on internal "
            f"host {text(dst)}, a CVE-2024-47176 probe"
        )
        return (Finding(self.rule, (source,), flow, message, direction="inbound"),)

    def _suppressed(self, source: str, moment: float) -> bool:
        """Return True when a probe falls in its source's suppression period."""
        first = self.bursts.setdefault(source, lambda: moment)
        gap = abs(moment - first)
        if gap <= self.settings.burst_seconds:
            return False
        if gap < self.settings.suppress_seconds:
            return True
        self.bursts.put(source, moment)
        return False

    def tick(self, now: datetime) -> None:
        """Forget sources quiet for the suppression time plus lateness."""
        idle = self.settings.suppress_seconds + self.settings.late_seconds
        self.bursts.expire(now.timestamp(), idle)
