"""Settings every detector shares: on or off, allowlists, severity, state bounds.

Each detector extends ``DetectorSettings`` with its thresholds; the config
file gives them as ``[detection.detectors.NAME]``, and unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork

from detectors.base import DetectionContext, IPAddress, Rule
from detectors.networks import Networks
from schemas.flow import FlowRecord


class DetectorSettings(BaseModel):
    """The settings of one detector; subclasses add their thresholds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        default=True, description="False keeps the detector off even when listed."
    )
    allow_sources: list[IPvAnyNetwork] = Field(
        default=[],
        description="Flows from these networks are never findings (authorised "
        "scanners).",
    )
    allow_destinations: list[IPvAnyNetwork] = Field(
        default=[], description="Flows to these networks are never findings."
    )
    severity: int | None = Field(
        default=None, ge=0, le=100, description="Replaces the rule's severity."
    )
    risk_score: float | None = Field(
        default=None, ge=0, le=100, description="Replaces the rule's risk score."
    )
    max_tracked: int = Field(
        default=10_000,
        gt=0,
        description="Hosts whose state the detector keeps; past this the oldest "
        "is dropped and counted.",
    )
    late_seconds: float = Field(
        default=600.0,
        ge=0,
        description="How long state outlives its window, for flows that arrive "
        "late or out of order.",
    )

    def apply(self, rule: Rule) -> Rule:
        """Return the rule with this detector's severity and risk score."""
        return dataclasses.replace(
            rule,
            severity=rule.severity if self.severity is None else self.severity,
            risk_score=rule.risk_score if self.risk_score is None else self.risk_score,
        )


class Allowlist:
    """Source and destination networks whose flows a detector ignores."""

    def __init__(self, settings: DetectorSettings) -> None:
        """Keep the networks from the settings."""
        self.sources = tuple(settings.allow_sources)
        self.destinations = tuple(settings.allow_destinations)

    def allows(self, flow: FlowRecord) -> bool:
        """Return True when the flow comes from or goes to an allowed network."""
        return _within(flow.src_addr, self.sources) or _within(
            flow.dst_addr, self.destinations
        )


def _within(address: IPAddress | None, networks: tuple[IPvAnyNetwork, ...]) -> bool:
    """Return True when an address lies in one of the networks."""
    if address is None or not networks:
        return False
    return any(address.version == net.version and address in net for net in networks)


S = TypeVar("S", bound="DetectorSettings")


class Configured(Generic[S]):
    """What every built-in detector keeps: settings, rule, networks, allowlist."""

    rule: Rule
    settings: S
    networks: Networks
    allowlist: Allowlist
    counters: Counter[str]

    def configure(self, context: DetectionContext, model: type[S]) -> S:
        """Validate this detector's settings and apply them to its rule."""
        base = type(self).rule
        self.settings = context.settings_for(base.name, model)
        self.rule = self.settings.apply(base)
        self.networks = context.networks
        self.allowlist = Allowlist(self.settings)
        self.counters = Counter()
        return self.settings
