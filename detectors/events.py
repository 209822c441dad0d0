"""Turning a closed window into an event (schema v1)."""

from __future__ import annotations

from datetime import datetime, timedelta

from detectors.base import Attack
from detectors.windows import Window
from schemas.event import (
    Endpoint,
    Event,
    EventInfo,
    FlowtrapInfo,
    NetworkInfo,
    ObserverInfo,
    RelatedInfo,
    RuleInfo,
    ThreatInfo,
    ThreatRef,
    VulnerabilityInfo,
    WindowInfo,
)

_TRANSPORTS = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp"}


def _refs(attacks: tuple[Attack, ...]) -> ThreatRef:
    """Build a ThreatRef from ATT&CK entries."""
    return ThreatRef(
        id=[a.id for a in attacks],
        name=[a.name for a in attacks],
        reference=[a.reference for a in attacks],
    )


def to_event(window: Window, now: datetime, seconds: float) -> Event:
    """Build the event for one closed window."""
    finding = window.first
    flow = finding.flow
    rule = window.rule
    src = str(flow.src_addr)
    dst = str(flow.dst_addr)
    first_seen = window.first_seen or window.start
    last_seen = window.last_seen or first_seen
    protocol = flow.protocol or 0
    severity = finding.severity if finding.severity is not None else rule.severity

    return Event(
        timestamp=now,
        event=EventInfo(
            id=window.event_id(),
            action=rule.name,
            severity=severity,
            risk_score=rule.risk_score,
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
        ),
        observer=ObserverInfo(ip=sorted(window.observers)),
        related=RelatedInfo(ip=sorted({src, dst})),
        threat=ThreatInfo(tactic=_refs(rule.tactics), technique=_refs(rule.techniques)),
        vulnerability=VulnerabilityInfo(id=list(rule.cves)),
        tags=list(rule.tags),
        message=finding.message,
        flowtrap=FlowtrapInfo(
            detector=rule.name,
            flows=window.flows,
            packets=window.packets,
            bytes=window.bytes,
            packets_scaled=window.packets_scaled,
            bytes_scaled=window.bytes_scaled,
            window=WindowInfo(
                start=window.start,
                end=window.start + timedelta(seconds=seconds),
                seconds=seconds,
            ),
            sample=[f.model_dump(mode="json") for f in window.sample],
        ),
    )
