"""CUPS scanning from inside: one internal host sending UDP/631 to many others."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from pydantic import Field

from detectors.base import DetectionContext, Finding, Rule
from detectors.cups import (
    BROWSED_CVES,
    CUPS_PORT,
    DISCOVERY,
    LATERAL_MOVEMENT,
    MEDIUM,
    REFERENCE,
    T1046,
    T1210,
    TAGS,
    UDP_631,
    is_udp_631,
    started,
)
from detectors.networks import text
from detectors.registry import register
from detectors.settings import Configured, DetectorSettings
from detectors.state import MAX_DESTINATIONS_PER_SOURCE, DistinctInWindow
from schemas.flow import FlowRecord


class FanoutSettings(DetectorSettings):
    """Settings of ``cups_browsed_internal_fanout``."""

    destinations: int = Field(
        default=20,
        ge=2,
        description="Internal destinations one source reaches within "
        "window_seconds that make it a scanner.",
    )
    window_seconds: float = Field(default=300.0, gt=0)
    ignore_browse: bool = Field(
        default=True,
        description="Ignore 631 → 631, the packets cups-browsed itself sends to "
        "the hosts its BrowseAddress names.",
    )


@register("cups_browsed_internal_fanout")
class InternalFanout(Configured[FanoutSettings]):
    """One internal host sending UDP/631 to many internal hosts: scanning inside."""

    rule = Rule(
        name="cups_browsed_internal_fanout",
        version=1,
        description=(
            "An internal host sent UDP to port 631 (cups-browsed) on many internal "
            "hosts in a short time: scanning for or spreading CVE-2024-47176 "
            "from inside."
        ),
        reference=REFERENCE,
        severity=MEDIUM,
        risk_score=float(MEDIUM),
        tactics=(DISCOVERY, LATERAL_MOVEMENT),
        techniques=(T1046, T1210),
        cves=BROWSED_CVES,
        tags=(*TAGS, "scan"),
    )
    interest = UDP_631
    settings_model = FanoutSettings

    def __init__(self, context: DetectionContext) -> None:
        """Keep the network classifier, settings and per-source destinations."""
        self.configure(context, FanoutSettings)
        self.reached = DistinctInWindow(
            self.settings.window_seconds,
            self.settings.late_seconds,
            max_keys=self.settings.max_tracked,
            max_items=MAX_DESTINATIONS_PER_SOURCE,
            counters=self.counters,
        )

    def evaluate(self, flow: FlowRecord) -> Iterable[Finding]:
        """Count a source's internal UDP/631 destinations; flag it past a threshold."""
        src, dst = flow.src_addr, flow.dst_addr
        if not is_udp_631(flow) or src is None or dst is None:
            return ()
        if self.settings.ignore_browse and flow.src_port == CUPS_PORT:
            return ()
        if not self.networks.is_internal(src) or src == dst:
            return ()
        if not self.networks.is_internal_unicast(dst):
            return ()
        if self.allowlist.allows(flow):
            self.counters["allowlisted"] += 1
            return ()

        source = text(src)
        reached = self.reached.add(source, text(dst), started(flow))
        if reached < self.settings.destinations:
            return ()
        seconds = self.settings.window_seconds
        message = (
            f"{source} sent UDP to cups-browsed port 631 on {reached} internal hosts "
            f"within {seconds:g} s, scanning for CVE-2024-47176 from inside"
        )
        return (
            Finding(
                self.rule,
                (source,),
                flow,
                message,
                direction="internal",
                details={"internal_destinations": reached},
            ),
        )

    def tick(self, now: datetime) -> None:
        """Forget sources quiet for the window plus lateness."""
        self.reached.expire(now.timestamp())
