"""The detector interface: flow record in, findings out."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from detectors.networks import Networks
from schemas.event import Direction
from schemas.flow import FlowRecord


@dataclass(frozen=True, slots=True)
class Attack:
    """A MITRE ATT&CK tactic or technique."""

    id: str
    name: str

    @property
    def reference(self) -> str:
        """Return the ATT&CK page of this tactic or technique."""
        kind = "tactics" if self.id.startswith("TA") else "techniques"
        return f"https://attack.mitre.org/{kind}/{self.id.replace('.', '/')}/"


@dataclass(frozen=True, slots=True)
class Rule:
    """What a detector is, for the event's ``rule`` and ``threat`` parts."""

    name: str
    version: int
    description: str
    reference: str
    severity: int
    risk_score: float
    tactics: tuple[Attack, ...]
    techniques: tuple[Attack, ...]
    cves: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Interest:
    """The cheap fields a detector needs; records that miss them are never built.

    ``None`` means any value. The pipeline tests these on the raw decoded row,
    before a full flow record exists.
    """

    protocols: frozenset[int] | None = None
    dst_ports: frozenset[int] | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    """One flow record that a detector flagged, and how to group it."""

    rule: Rule
    key: tuple[str, ...]
    flow: FlowRecord
    message: str
    direction: Direction = "outbound"
    severity: int | None = None


@dataclass(frozen=True, slots=True)
class DetectionContext:
    """What every detector may use: network classification and its settings."""

    networks: Networks
    settings: dict[str, object] = field(default_factory=dict)


class Detector(Protocol):
    """A detector: a rule, the fields it needs first, and an evaluate call."""

    rule: Rule
    interest: Interest

    def evaluate(self, flow: FlowRecord) -> Iterable[Finding]:
        """Return the findings for one flow record (often none)."""
        ...
