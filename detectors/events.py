"""Turning a closed window into an event (schema v1).

Events are built directly as the JSON document that ``schemas.event.Event``
describes, with the values that model would serialise to; building and
dumping the pydantic model for every event cost about 170 microseconds, and a
burst of findings spent its time there. ``to_event`` validates a document
into the model, and the tests hold the two to the same output.
"""

from __future__ import annotations

import struct
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import communityid

from detectors.base import Attack, Rule
from detectors.networks import text
from detectors.windows import Window
from schemas.event import SCHEMA_VERSION, Document, Event
from schemas.flow import COUNTER_MAX, FlowRecord

_TRANSPORTS = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp"}

# Related addresses listed in one event; the rest are counted, not listed.
MAX_RELATED = 32

_COMMUNITY_ID = communityid.CommunityID()
_PORT = struct.Struct("!H")


def _refs(attacks: tuple[Attack, ...]) -> dict[str, list[str]]:
    """Return the ECS threat reference for ATT&CK entries."""
    return {
        "id": [a.id for a in attacks],
        "name": [a.name for a in attacks],
        "reference": [a.reference for a in attacks],
    }


@lru_cache(maxsize=4_096)
def _json_time(moment: datetime) -> str:
    """Format a UTC datetime as the event schema writes it (``Z``, no offset).

    Cached: the flows of one export packet share its export time, and the
    events of one window its start and end.
    """
    written = moment.isoformat()
    return written[:-6] + "Z" if written.endswith("+00:00") else written


class _PackedTuple(communityid.FlowTuple):  # type: ignore[misc]
    """A flow tuple given in network byte order already, as flow records hold it.

    The library converts a tuple to network byte order and copies it before
    ordering it; these addresses and ports come packed, so the converted tuple
    is the tuple itself, and an ordered one needs no copy. The checks, the
    ICMP port mapping, the order test, hashing and rendering stay the
    library's.
    """

    def in_nbo(self) -> communityid.FlowTuple:
        """Return the tuple: it is in network byte order."""
        return self

    def in_order(self) -> communityid.FlowTuple:
        """Return the tuple when ordered, else the library's flipped copy."""
        if self.is_ordered():
            return self
        return super().in_order()


@lru_cache(maxsize=65_536)
def _community_id(protocol: int, src: bytes, dst: bytes, ports: tuple[Any, Any]) -> str:
    """Return the Community ID v1 of a 5-tuple (cached: it costs microseconds)."""
    sport, dport = (None if port is None else _PORT.pack(port) for port in ports)
    key = _PackedTuple(protocol, src, dst, sport, dport)
    return str(_COMMUNITY_ID.render(_COMMUNITY_ID.hash(key.in_order())))


def community_id(flow: FlowRecord) -> str | None:
    """Return the Community ID v1 of a flow's 5-tuple, or None when it has none."""
    if flow.src_addr is None or flow.dst_addr is None or flow.protocol is None:
        return None
    ports = (flow.src_port, flow.dst_port)
    if flow.protocol not in communityid.PORT_PROTOS:
        ports = (None, None)
    try:
        return _community_id(
            flow.protocol, flow.src_addr.packed, flow.dst_addr.packed, ports
        )
    except (communityid.Error, struct.error):
        # A port-carrying protocol exported without ports, or a port that
        # does not fit 16 bits.
        return None


def _side(interface: int | None) -> dict[str, Any] | None:
    """Return the observer side for an exported ifIndex, if any."""
    if interface is None:
        return None
    return {"interface": {"id": str(interface)}}


def _related(window: Window, src: str, dst: str) -> list[str]:
    """Return the event's addresses: both endpoints first, then the rest, bounded."""
    rest = sorted((window.related | window.destinations) - {src, dst})
    return sorted({src, dst}) + rest[: MAX_RELATED - 2]


@lru_cache(maxsize=256)
def _rule_parts(rule: Rule) -> tuple[Document, Document, Document]:
    """Return the parts of an event that depend on its rule alone (built once)."""
    info = {
        "id": rule.name,
        "name": rule.name,
        "version": str(rule.version),
        "description": rule.description,
        "reference": rule.reference,
        "category": "network",
    }
    threat = {
        "framework": "MITRE ATT&CK",
        "tactic": _refs(rule.tactics),
        "technique": _refs(rule.techniques),
    }
    vulnerability: Document = {"id": list(rule.cves), "enumeration": "CVE"}
    if rule.cves:
        vulnerability["reference"] = rule.reference
    return info, threat, vulnerability


def _address(address: Any) -> str | None:
    """Return an address as text, or None."""
    return None if address is None else text(address)


def flow_document(flow: FlowRecord) -> Document:
    """Return a flow record as the event's sample lists it (its JSON form)."""
    scale = flow.sampling_interval or 1
    return {
        "exporter": text(flow.exporter),
        "exporter_port": flow.exporter_port,
        "version": flow.version,
        "observation_domain_id": flow.observation_domain_id,
        "template_id": flow.template_id,
        "src_addr": _address(flow.src_addr),
        "dst_addr": _address(flow.dst_addr),
        "src_port": flow.src_port,
        "dst_port": flow.dst_port,
        "protocol": flow.protocol,
        "packets": flow.packets,
        "bytes": flow.bytes,
        "start": None if flow.start is None else _json_time(flow.start),
        "end": None if flow.end is None else _json_time(flow.end),
        "time_trusted": flow.time_trusted,
        "tcp_flags": flow.tcp_flags,
        "input_interface": flow.input_interface,
        "output_interface": flow.output_interface,
        "input_interface_name": flow.input_interface_name,
        "output_interface_name": flow.output_interface_name,
        "vrf_name": flow.vrf_name,
        "next_hop": _address(flow.next_hop),
        "sampling_interval": flow.sampling_interval,
        "export_time": _json_time(flow.export_time),
        "fields": dict(flow.fields),
        "packets_scaled": None
        if flow.packets is None
        else min(flow.packets * scale, COUNTER_MAX),
        "bytes_scaled": None
        if flow.bytes is None
        else min(flow.bytes * scale, COUNTER_MAX),
    }


def event_document(window: Window, now: datetime, seconds: float) -> Document:
    """Build the event document for one closed window."""
    finding = window.lead or window.first
    flow = finding.flow
    rule = window.rule
    src = str(flow.src_addr)
    dst = str(flow.dst_addr)
    first_seen = window.first_seen or window.start
    last_seen = window.last_seen or first_seen
    protocol = flow.protocol or 0
    risk = finding.risk_score if finding.risk_score is not None else rule.risk_score
    rule_info, threat, vulnerability = _rule_parts(rule)

    network: Document = {
        "transport": _TRANSPORTS.get(protocol, str(protocol)),
        "type": "ipv6"
        if flow.src_addr is not None and flow.src_addr.version == 6
        else "ipv4",
        "iana_number": str(protocol),
        "direction": finding.direction,
    }
    community = community_id(flow)
    if community is not None:
        network["community_id"] = community
    observer: Document = {"ip": sorted(window.observers), "type": "netflow-exporter"}
    ingress = _side(flow.input_interface)
    if ingress is not None:
        observer["ingress"] = ingress
    egress = _side(flow.output_interface)
    if egress is not None:
        observer["egress"] = egress
    source: Document = {"ip": src}
    if flow.src_port is not None:
        source["port"] = flow.src_port
    destination: Document = {"ip": dst}
    if flow.dst_port is not None:
        destination["port"] = flow.dst_port

    return {
        "@timestamp": _json_time(now),
        "event": {
            "id": window.event_id(),
            "kind": "alert",
            "category": ["network", "intrusion_detection"],
            "type": ["connection", "info"],
            "action": rule.name,
            "dataset": "flowtrap.alert",
            "module": "flowtrap",
            "severity": finding.effective_severity,
            "risk_score": float(risk),
            "start": _json_time(first_seen),
            "end": _json_time(last_seen),
        },
        "rule": dict(rule_info),
        "source": source,
        "destination": destination,
        "network": network,
        "observer": observer,
        "related": {"ip": _related(window, src, dst)},
        "threat": {
            "framework": threat["framework"],
            "tactic": dict(threat["tactic"]),
            "technique": dict(threat["technique"]),
        },
        "vulnerability": dict(vulnerability),
        "tags": list(rule.tags),
        "message": finding.message,
        "flowtrap": {
            "schema_version": SCHEMA_VERSION,
            "detector": rule.name,
            "flows": window.flows,
            "packets": window.packets,
            "bytes": window.bytes,
            "packets_scaled": window.packets_scaled,
            "bytes_scaled": window.bytes_scaled,
            "distinct_destinations": len(window.destinations),
            "time_trusted": window.time_trusted,
            "window": {
                "start": _json_time(window.start),
                "end": _json_time(window.start + timedelta(seconds=seconds)),
                "seconds": float(seconds),
            },
            "details": dict(finding.details),
            "sample": [flow_document(f) for f in window.sample],
        },
    }


def to_event(window: Window, now: datetime, seconds: float) -> Event:
    """Build the event for one closed window as the validated model."""
    return Event.model_validate(event_document(window, now, seconds))
