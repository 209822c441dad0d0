"""Turning a closed window into an event (schema v1)."""

from __future__ import annotations

from datetime import datetime, timedelta

import communityid

from detectors.base import Attack
from detectors.windows import Window
from schemas.event import (
    Endpoint,
    Event,
    EventInfo,
    FlowtrapInfo,
    Interface,
    NetworkInfo,
    ObserverInfo,
    ObserverSide,
    RelatedInfo,
    RuleInfo,
    ThreatInfo,
    ThreatRef,
    VulnerabilityInfo,
    WindowInfo,
)
from schemas.flow import FlowRecord

_TRANSPORTS = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp"}

# Related addresses listed in one event; the rest are counted, not listed.
MAX_RELATED = 32

_COMMUNITY_ID = communityid.CommunityID()


def _refs(attacks: tuple[Attack, ...]) -> ThreatRef:
    """Build a ThreatRef from ATT&CK entries."""
    return ThreatRef(
        id=[a.id for a in attacks],
        name=[a.name for a in attacks],
        reference=[a.reference for a in attacks],
    )


def community_id(flow: FlowRecord) -> str | None:
    """Return the Community ID v1 of a flow's 5-tuple, or None when it has none."""
    if flow.src_addr is None or flow.dst_addr is None or flow.protocol is None:
        return None
    ports = (flow.src_port, flow.dst_port)
    if flow.protocol not in communityid.PORT_PROTOS:
        ports = (None, None)
    try:
        key = communityid.FlowTuple(
            flow.protocol, flow.src_addr.packed, flow.dst_addr.packed, *ports
        )
        return str(_COMMUNITY_ID.calc(key))
    except communityid.Error:
        # A port-carrying protocol exported without ports.
        return None


def _side(interface: int | None) -> ObserverSide | None:
    """Return the observer side for an exported ifIndex, if any."""
    if interface is None:
        return None
    return ObserverSide(interface=Interface(id=str(interface)))


def _related(window: Window, src: str, dst: str) -> list[str]:
    """Return the event's addresses: both endpoints first, then the rest, bounded."""
    rest = sorted((window.related | window.destinations) - {src, dst})
    return sorted({src, dst}) + rest[: MAX_RELATED - 2]


def to_event(window: Window, now: datetime, seconds: float) -> Event:
    """Build the event for one closed window."""
    finding = window.lead or window.first
    flow = finding.flow
    rule = window.rule
    src = str(flow.src_addr)
    dst = str(flow.dst_addr)
    first_seen = window.first_seen or window.start
    last_seen = window.last_seen or first_seen
    protocol = flow.protocol or 0
    risk = finding.risk_score if finding.risk_score is not None else rule.risk_score

    return Event(
        timestamp=now,
        event=EventInfo(
            id=window.event_id(),
            action=rule.name,
            severity=finding.effective_severity,
            risk_score=risk,
            start=first_seen,
            end=last_seen,
        ),
        rule=RuleInfo(
            id=rule.name,
            name=rule.name,
            version=str(rule.version),
            description=rule.description,
            reference=rule.reference,
        ),
        source=Endpoint(ip=src, port=flow.src_port),
        destination=Endpoint(ip=dst, port=flow.dst_port),
        network=NetworkInfo(
            transport=_TRANSPORTS.get(protocol, str(protocol)),
            type="ipv6"
            if flow.src_addr is not None and flow.src_addr.version == 6
            else "ipv4",
            iana_number=str(protocol),
            direction=finding.direction,
            community_id=community_id(flow),
        ),
        observer=ObserverInfo(
            ip=sorted(window.observers),
            ingress=_side(flow.input_interface),
            egress=_side(flow.output_interface),
        ),
        related=RelatedInfo(ip=_related(window, src, dst)),
        threat=ThreatInfo(tactic=_refs(rule.tactics), technique=_refs(rule.techniques)),
        vulnerability=VulnerabilityInfo(
            id=list(rule.cves), reference=rule.reference if rule.cves else None
        ),
        tags=list(rule.tags),
        message=finding.message,
        flowtrap=FlowtrapInfo(
            detector=rule.name,
            flows=window.flows,
            packets=window.packets,
            bytes=window.bytes,
            packets_scaled=window.packets_scaled,
            bytes_scaled=window.bytes_scaled,
            distinct_destinations=len(window.destinations),
            time_trusted=window.time_trusted,
            window=WindowInfo(
                start=window.start,
                end=window.start + timedelta(seconds=seconds),
                seconds=seconds,
            ),
            details=dict(finding.details),
            sample=[f.model_dump(mode="json") for f in window.sample],
        ),
    )
