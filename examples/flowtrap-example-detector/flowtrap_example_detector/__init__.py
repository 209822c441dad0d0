"""An example flowtrap detector package: IPP printing to the internet.

An internal host opening TCP to port 631 on an external host is sending print
jobs (and documents) out of the network, or reaching a printer URL that a
cups-browsed probe planted. The detector shows the whole interface: a rule, a
cheap interest, settings validated from ``[detection.detectors.NAME]``, an
allowlist, and ``evaluate``.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import Field

from detectors.base import DetectionContext, Finding, Interest, Rule
from detectors.settings import Allowlist, DetectorSettings
from schemas.flow import FlowRecord

IPP_PORT = 631
TCP = 6


class IppPrintSettings(DetectorSettings):
    """Settings of ``ipp_print_external``: the shared ones plus the port list."""

    ports: list[int] = Field(
        default=[IPP_PORT], description="TCP ports that count as printing."
    )


class IppPrintExternal:
    """TCP to an IPP port from an internal host to an external unicast address."""

    rule = Rule(
        name="ipp_print_external",
        version=1,
        description="An internal host opened IPP (TCP/631) to an external host.",
        reference="https://www.rfc-editor.org/rfc/rfc8011",
        severity=21,
        risk_score=21.0,
        tactics=(),
        techniques=(),
        tags=("ipp", "example"),
    )
    settings_model = IppPrintSettings

    def __init__(self, context: DetectionContext) -> None:
        """Validate the settings; ask for TCP to the configured ports only."""
        self.settings = context.settings_for(self.rule.name, IppPrintSettings)
        self.networks = context.networks
        self.allowlist = Allowlist(self.settings)
        self.interest = Interest(
            protocols=frozenset({TCP}), dst_ports=frozenset(self.settings.ports)
        )

    def evaluate(self, flow: FlowRecord) -> Iterable[Finding]:
        """Flag internal → external TCP to an IPP port."""
        src, dst = flow.src_addr, flow.dst_addr
        if src is None or dst is None or self.allowlist.allows(flow):
            return ()
        if not self.networks.is_internal(src):
            return ()
        if not self.networks.is_external_unicast(dst):
            return ()
        message = f"{src} opened IPP to external host {dst} port {flow.dst_port}"
        return (Finding(self.rule, (str(src), str(dst)), flow, message),)
