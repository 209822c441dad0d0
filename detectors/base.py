"""The detector interface: flow record in, findings out."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ValidationError

from detectors.networks import Networks
from schemas.event import Direction
from schemas.flow import FlowRecord

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SettingsT = TypeVar("SettingsT", bound=BaseModel)


class DetectorConfigError(ValueError):
    """A detector configuration that cannot start; the message says what to fix."""


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
    """What a detector is, for the event's ``rule`` and ``threat`` parts.

    ``tactics`` pairs with ``techniques``: one tactic serves them all, or the
    two lists have the same length and pair by position (OCSF keeps the pairs).
    """

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


class SourceWatch:
    """A live set of source addresses whose flows of some protocols a detector wants.

    The detector adds and drops addresses as its own state changes, and bounds
    them with that state's cap. The pipeline tests each raw row's packed source
    address against ``members``; for an address just added it also looks back
    over the rows that arrived in the last ``lookback_seconds``, so a flow that
    arrived before the flow that made it interesting is still seen.
    """

    def __init__(self, protocols: frozenset[int], lookback_seconds: float) -> None:
        """Start with no addresses."""
        self.protocols = protocols
        self.lookback_seconds = lookback_seconds
        self.members: set[bytes] = set()
        self.fresh: set[bytes] = set()
        # Counts changes, so that a copy elsewhere knows when to catch up.
        self.version = 0

    def add(self, address: IPAddress) -> None:
        """Watch an address; a new one is also due for a look back."""
        self.add_packed(address.packed)

    def add_packed(self, packed: bytes) -> None:
        """Watch an address given in network byte order."""
        if packed not in self.members:
            self.members.add(packed)
            self.fresh.add(packed)
            self.version += 1

    def discard(self, address: IPAddress) -> None:
        """Stop watching an address."""
        if address.packed in self.members:
            self.members.discard(address.packed)
            self.version += 1
        self.fresh.discard(address.packed)

    def replace(self, members: set[bytes]) -> None:
        """Take another watch's members as they are (no look back for them)."""
        self.members = set(members)
        self.fresh &= self.members

    def take_fresh(self) -> set[bytes]:
        """Return the addresses added since the last call, and forget them."""
        fresh, self.fresh = self.fresh, set()
        return fresh

    def wants(self, flow: FlowRecord) -> bool:
        """Return True when a flow's protocol and source address are watched."""
        return (
            flow.protocol in self.protocols
            and flow.src_addr is not None
            and flow.src_addr.packed in self.members
        )


@dataclass(frozen=True, slots=True)
class Interest:
    """The cheap fields a detector needs; records that miss them are never built.

    A row is wanted when its protocol and destination port match (``None``
    means any value; an empty set means none), or when ``sources`` watches its
    protocol and source address. The pipeline tests these on the raw decoded
    row, before a full flow record exists.
    """

    protocols: frozenset[int] | None = None
    dst_ports: frozenset[int] | None = None
    sources: SourceWatch | None = None

    def wants(self, flow: FlowRecord) -> bool:
        """Return True when a full flow record matches this interest."""
        if self.wants_by_port(flow):
            return True
        return self.sources is not None and self.sources.wants(flow)

    def wants_by_port(self, flow: FlowRecord) -> bool:
        """Return True when the protocol and destination port alone match."""
        return (self.protocols is None or flow.protocol in self.protocols) and (
            self.dst_ports is None or flow.dst_port in self.dst_ports
        )


@dataclass(frozen=True, slots=True)
class Finding:
    """One flow record that a detector flagged, and how to group it.

    ``key`` groups findings into one event per window. ``severity`` and
    ``risk_score`` override the rule's; ``details`` and ``related`` add what
    the flow alone does not say (a correlated probe, its source). A finding
    with ``counts`` false raises its window's severity without adding its
    flow to the counts again (a flow already reported at a lower severity).
    """

    rule: Rule
    key: tuple[str, ...]
    flow: FlowRecord
    message: str
    direction: Direction = "outbound"
    severity: int | None = None
    risk_score: float | None = None
    details: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    related: tuple[str, ...] = ()
    counts: bool = True

    @property
    def effective_severity(self) -> int:
        """Return the severity this finding carries."""
        return self.rule.severity if self.severity is None else self.severity


@dataclass(frozen=True, slots=True)
class DetectionContext:
    """What every detector may use: network classification and its settings.

    ``options`` holds each detector's raw settings by detector name, as the
    config file's ``[detection.detectors.NAME]`` table gives them.
    """

    networks: Networks
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def settings_for(self, name: str, model: type[SettingsT]) -> SettingsT:
        """Validate one detector's settings, or raise DetectorConfigError."""
        try:
            return model.model_validate(dict(self.options.get(name, {})))
        except ValidationError as error:
            problems = "; ".join(
                f"detection.detectors.{name}.{'.'.join(str(p) for p in issue['loc'])}"
                f": {issue['msg']}"
                for issue in error.errors()
            )
            raise DetectorConfigError(f"invalid configuration: {problems}") from None


class Detector(Protocol):
    """A detector: a rule, the fields it needs first, and an evaluate call."""

    rule: Rule
    interest: Interest

    def evaluate(self, flow: FlowRecord) -> Iterable[Finding]:
        """Return the findings for one flow record (often none)."""
        ...


@runtime_checkable
class Ticking(Protocol):
    """A detector with state to expire: the pipeline hands it the clock."""

    def tick(self, now: datetime) -> None:
        """Drop state that no flow arriving from now on can still match."""
        ...
