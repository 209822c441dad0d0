"""The event as an OCSF Detection Finding (class 2004), built with py-ocsf-models.

The same finding as the ECS event, for SIEMs that read OCSF. py-ocsf-models
(OCSF 1.5.0) has every part but the network endpoints of an evidence, which it
leaves as a TODO; ``NetworkEvidence`` adds ``src_endpoint``, ``dst_endpoint``
and ``connection_info`` with the names and types OCSF gives them. What OCSF
has no place for (the aggregate, the window, the sample of flow records) goes
to ``unmapped.flowtrap`` unchanged.
"""

from __future__ import annotations

from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from py_ocsf_models.events.findings.activity_id import ActivityID
from py_ocsf_models.events.findings.detection_finding import DetectionFinding
from py_ocsf_models.events.findings.detection_finding_type_id import (
    DetectionFindingTypeID,
)
from py_ocsf_models.events.findings.risk_level_id import RiskLevelID
from py_ocsf_models.events.findings.severity_id import SeverityID
from py_ocsf_models.events.findings.status_id import StatusID
from py_ocsf_models.objects.analytic import Analytic
from py_ocsf_models.objects.cve import CVE
from py_ocsf_models.objects.evidence_artifacts import EvidenceArtifacts
from py_ocsf_models.objects.finding_info import FindingInformation
from py_ocsf_models.objects.metadata import Metadata
from py_ocsf_models.objects.mitre_attack import MITREAttack, Tactic, Technique
from py_ocsf_models.objects.observable import Observable, TypeID
from py_ocsf_models.objects.product import Product
from py_ocsf_models.objects.vulnerability_details import VulnerabilityDetails
from pydantic import BaseModel

from schemas.event import Event

CLASS_UID = 2004
# OCSF analytic type 1: a rule.
_ANALYTIC_RULE = 1
# OCSF network direction ids.
_DIRECTIONS = {"inbound": 1, "outbound": 2, "internal": 3, "external": 2}


class NetworkEndpoint(BaseModel):
    """OCSF ``network_endpoint``: an address and port."""

    ip: str
    port: int | None = None


class ConnectionInfo(BaseModel):
    """OCSF ``network_connection_info``: protocol, direction, Community ID."""

    protocol_num: int
    protocol_name: str
    protocol_ver_id: int
    direction_id: int
    community_uid: str | None = None


class NetworkEvidence(EvidenceArtifacts):  # type: ignore[misc]  # untyped base
    """An OCSF evidence with the network parts py-ocsf-models leaves out."""

    src_endpoint: NetworkEndpoint | None = None
    dst_endpoint: NetworkEndpoint | None = None
    connection_info: ConnectionInfo | None = None


def _ms(moment: datetime) -> int:
    """Return an aware datetime as epoch milliseconds."""
    return int(moment.timestamp() * 1000)


def _severity(severity: int) -> SeverityID:
    """Map the 0-100 ECS severity to an OCSF severity id."""
    if severity >= 90:
        return SeverityID.Critical
    if severity >= 70:
        return SeverityID.High
    if severity >= 40:
        return SeverityID.Medium
    if severity >= 20:
        return SeverityID.Low
    return SeverityID.Informational


def _risk_level(score: float) -> RiskLevelID:
    """Map the 0-100 risk score to an OCSF risk level id."""
    if score >= 90:
        return RiskLevelID.Critical
    if score >= 70:
        return RiskLevelID.High
    if score >= 40:
        return RiskLevelID.Medium
    if score >= 20:
        return RiskLevelID.Low
    return RiskLevelID.Info


def _attacks(event: Event) -> list[MITREAttack]:
    """Pair ATT&CK techniques with tactics as the rule lists them.

    One tactic serves every technique; equal lists pair by position; any other
    shape gives separate tactic and technique entries rather than a guess.
    """
    threat = event.threat
    tactics = [
        Tactic(uid=uid, name=name, src_url=ref)
        for uid, name, ref in zip(
            threat.tactic.id, threat.tactic.name, threat.tactic.reference, strict=True
        )
    ]
    techniques = [
        Technique(uid=uid, name=name, src_url=ref)
        for uid, name, ref in zip(
            threat.technique.id,
            threat.technique.name,
            threat.technique.reference,
            strict=True,
        )
    ]
    if len(tactics) == 1:
        return [MITREAttack(tactic=tactics[0], technique=t) for t in techniques]
    if len(tactics) == len(techniques):
        return [
            MITREAttack(tactic=tactic, technique=technique)
            for tactic, technique in zip(tactics, techniques, strict=True)
        ]
    return [MITREAttack(tactic=t) for t in tactics] + [
        MITREAttack(technique=t) for t in techniques
    ]


def _product() -> Product:
    """Describe flowtrap as the OCSF product."""
    try:
        release = version("flowtrap")
    except PackageNotFoundError:
        release = None
    return Product(name="flowtrap", vendor_name="flowtrap", version=release)


def to_ocsf_model(event: Event) -> DetectionFinding:
    """Build the OCSF Detection Finding for one event."""
    network = event.network
    flowtrap = event.flowtrap
    severity = _severity(event.event.severity)
    rule = event.rule
    evidence = NetworkEvidence(
        name=rule.name,
        src_endpoint=NetworkEndpoint(ip=event.source.ip, port=event.source.port),
        dst_endpoint=NetworkEndpoint(
            ip=event.destination.ip, port=event.destination.port
        ),
        connection_info=ConnectionInfo(
            protocol_num=int(network.iana_number),
            protocol_name=network.transport,
            protocol_ver_id=6 if network.type == "ipv6" else 4,
            direction_id=_DIRECTIONS.get(network.direction, 0),
            community_uid=network.community_id,
        ),
        data={"observer_ip": event.observer.ip},
    )
    return DetectionFinding(
        activity_id=ActivityID.Create,
        activity_name="Create",
        type_uid=DetectionFindingTypeID.Create,
        type_name="Detection Finding: Create",
        time=_ms(event.timestamp),
        time_dt=event.timestamp,
        start_time=_ms(event.event.start),
        start_time_dt=event.event.start,
        end_time=_ms(event.event.end),
        end_time_dt=event.event.end,
        count=flowtrap.flows,
        severity_id=severity,
        severity=severity.name,
        risk_score=round(event.event.risk_score),
        risk_level_id=_risk_level(event.event.risk_score),
        risk_level=_risk_level(event.event.risk_score).name,
        status_id=StatusID.New,
        status="New",
        message=event.message,
        metadata=Metadata(
            uid=event.event.id,
            product=_product(),
            labels=event.tags,
            log_name=event.event.dataset,
        ),
        finding_info=FindingInformation(
            uid=event.event.id,
            title=rule.name,
            desc=rule.description,
            types=event.event.category,
            src_url=rule.reference,
            first_seen_time=_ms(event.event.start),
            first_seen_time_dt=event.event.start,
            last_seen_time=_ms(event.event.end),
            last_seen_time_dt=event.event.end,
            data_sources=["netflow", "ipfix"],
            analytic=Analytic(
                name=rule.name,
                uid=rule.id,
                type="Rule",
                type_id=_ANALYTIC_RULE,
                version=rule.version,
                desc=rule.description,
            ),
            attacks=_attacks(event),
        ),
        vulnerabilities=[
            VulnerabilityDetails(cve=CVE(uid=cve), references=[rule.reference])
            for cve in event.vulnerability.id
        ],
        observables=[
            Observable(
                name="src_endpoint.ip",
                type_id=TypeID.IP_Address,
                type="IP Address",
                value=event.source.ip,
            ),
            Observable(
                name="dst_endpoint.ip",
                type_id=TypeID.IP_Address,
                type="IP Address",
                value=event.destination.ip,
            ),
        ],
        evidences=[evidence],
        unmapped={"flowtrap": flowtrap.model_dump(mode="json")},
    )


def to_ocsf(event: Event) -> dict[str, Any]:
    """Return one event as an OCSF Detection Finding document (JSON-ready)."""
    # serialize_as_any keeps NetworkEvidence's fields, which the declared
    # EvidenceArtifacts type would drop.
    document: dict[str, Any] = to_ocsf_model(event).model_dump(
        mode="json", exclude_none=True, serialize_as_any=True
    )
    return document
