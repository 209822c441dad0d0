"""CUPS cups-browsed detectors (CVE-2024-47176).

cups-browsed listens on UDP/631 and, before the fix, fetched printer attributes
from any URL a browse packet named. UDP/631 leaving the network is either a
misconfigured browse or a host inside trying to trigger the flaw elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable

from detectors.base import Attack, DetectionContext, Finding, Interest, Rule
from detectors.registry import register
from schemas.flow import FlowRecord

CUPS_PORT = 631
UDP = 17

_CVES = ("CVE-2024-47176",)
_REFERENCE = "https://nvd.nist.gov/vuln/detail/CVE-2024-47176"
_INITIAL_ACCESS = Attack("TA0001", "Initial Access")
_T1133 = Attack("T1133", "External Remote Services")
_T1190 = Attack("T1190", "Exploit Public-Facing Application")


@register("cups_browsed_internal_external")
class InternalToExternal:
    """UDP to port 631 from an internal host to an external unicast address."""

    rule = Rule(
        name="cups_browsed_internal_external",
        version=1,
        description=(
            "An internal host sent UDP to port 631 (cups-browsed) on an external "
            "host, which may be an attempt to trigger CVE-2024-47176 there."
        ),
        reference=_REFERENCE,
        severity=47,
        risk_score=47.0,
        tactics=(_INITIAL_ACCESS,),
        techniques=(_T1133, _T1190),
        cves=_CVES,
        tags=("cups", "cve-2024-47176"),
    )
    interest = Interest(protocols=frozenset({UDP}), dst_ports=frozenset({CUPS_PORT}))

    def __init__(self, context: DetectionContext) -> None:
        """Keep the network classifier."""
        self.networks = context.networks

    def evaluate(self, flow: FlowRecord) -> Iterable[Finding]:
        """Flag internal → external unicast UDP/631."""
        src, dst = flow.src_addr, flow.dst_addr
        if flow.protocol != UDP or flow.dst_port != CUPS_PORT:
            return ()
        if src is None or dst is None:
            return ()
        if not self.networks.is_internal(src):
            return ()
        if not self.networks.is_external_unicast(dst):
            return ()
        message = (
            f"{src} sent UDP to cups-browsed port 631 on external host {dst}; "
            "check it for CVE-2024-47176 scanning"
        )
        return (Finding(self.rule, (str(src), str(dst)), flow, message),)
