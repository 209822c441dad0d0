"""Events (schema v1) from every CUPS detector: schema, ids, ECS fields, OCSF.

One synthetic exporter session raises all four detectors; every event it and
the bundled exporter captures give is checked against the published schema and
converted to OCSF.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import communityid
import jsonschema
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from py_ocsf_models.events.findings.detection_finding import DetectionFinding

from collector.capture import Datagram, read_capture
from collector.decoder import Decoder
from collector.pipeline import Pipeline
from detectors.base import Interest
from detectors.cups import InternalToExternal
from detectors.events import community_id, to_event
from detectors.registry import build
from detectors.windows import Windows
from schemas.event import Event
from schemas.flow import FlowRecord
from schemas.ocsf import to_ocsf
from tests.conftest import EXPORTS
from tests.test_detectors_callback import (
    CALLBACK_ROW,
    EXPORT_SECS,
    PROBE_ROW,
    Keep,
    export,
    row,
)
from tests.test_detectors_cups import ALL, T0, context, make_flow

SCHEMA = Event.model_json_schema(by_alias=True)


def session() -> list[bytes]:
    """Export packets that raise all four detectors once or more."""
    egress = [row("10.1.0.5", f"203.0.113.{n}", 40001, 631, 17, n) for n in range(12)]
    variant = row("10.1.0.9", "203.0.113.200", 41500, 80, 6, 4.0)
    scan = [row("10.1.0.7", f"10.2.0.{n}", 40002, 631, 17, n) for n in range(1, 22)]
    return [export(*egress), export(PROBE_ROW, CALLBACK_ROW, variant), export(*scan)]


def replay(packets: Iterable[bytes], exporter: str = "192.0.2.1") -> list[Event]:
    """Run export packets through a pipeline with all four detectors."""
    sink = Keep()
    pipeline = Pipeline(Decoder(), build(ALL, context()), Windows(), [sink])
    pipeline.feed(Datagram(exporter, 2055, EXPORT_SECS, export(template=True)))
    for n, data in enumerate(packets):
        pipeline.feed(Datagram(exporter, 2055, EXPORT_SECS + n, data))
    pipeline.flush()
    return sink.events


def captured_events() -> list[Event]:
    """Events from every bundled exporter capture, all four detectors on."""
    events = []
    for capture in sorted(EXPORTS.glob("*.pcap")):
        sink = Keep()
        pipeline = Pipeline(Decoder(), build(ALL, context()), Windows(), [sink])
        for datagram in read_capture(capture):
            pipeline.feed(datagram)
        pipeline.flush()
        events += sink.events
    return events


def document(event: Event) -> dict[str, Any]:
    """The event as the JSON line carries it."""
    parsed: dict[str, Any] = orjson.loads(
        orjson.dumps(event.model_dump(mode="json", by_alias=True))
    )
    return parsed


def test_the_session_raises_every_cups_detector() -> None:
    """Egress (escalated), probe, callback, variant and fan-out all appear."""
    events = replay(session())
    seen = {(e.rule.name, e.event.severity) for e in events}
    assert seen >= {
        ("cups_browsed_internal_external", 47),
        ("cups_browsed_internal_external", 73),
        ("cups_browsed_external_internal", 21),
        ("cups_browsed_callback", 73),
        ("cups_browsed_callback", 47),
        ("cups_browsed_internal_fanout", 47),
    }


def test_every_event_validates_against_the_published_schema() -> None:
    """Each event, synthetic or from real exporters, matches `flowtrap schema event`."""
    events = replay(session()) + captured_events()
    assert {e.rule.name for e in events} == set(ALL)
    for event in events:
        doc = document(event)
        jsonschema.validate(doc, SCHEMA)
        assert next(iter(doc)) == "@timestamp"
        assert Event.model_validate(doc) == event


def test_callback_event_carries_the_ecs_fields_an_analyst_needs() -> None:
    """The high-severity callback names both hosts, the probe and the rule."""
    (event,) = [
        e
        for e in replay(session())
        if e.rule.name == "cups_browsed_callback" and e.event.severity == 73
    ]
    doc = document(event)
    assert doc["event"]["kind"] == "alert"
    assert doc["event"]["category"] == ["network", "intrusion_detection"]
    assert (doc["source"]["ip"], doc["destination"]["ip"]) == (
        "10.1.0.9",
        "198.51.100.66",
    )
    assert doc["network"]["transport"] == "tcp"
    assert doc["network"]["community_id"].startswith("1:")
    assert doc["observer"]["ip"] == ["192.0.2.1"]
    assert doc["related"]["ip"] == ["10.1.0.9", "198.51.100.66"]
    assert doc["threat"]["framework"] == "MITRE ATT&CK"
    assert doc["threat"]["technique"]["id"] == ["T1133", "T1190"]
    assert "CVE-2024-47176" in doc["vulnerability"]["id"]
    assert doc["rule"]["reference"].startswith("https://")
    assert doc["flowtrap"]["details"]["probe_source"] == "198.51.100.66"
    assert doc["flowtrap"]["distinct_destinations"] == 1
    assert doc["flowtrap"]["sample"][0]["protocol"] == 6
    assert "ingress" not in doc["observer"]


def test_variant_event_lists_the_prober_as_related() -> None:
    """The new-address variant names the prober among related addresses."""
    (event,) = [
        e
        for e in replay(session())
        if e.rule.name == "cups_browsed_callback" and e.event.severity == 47
    ]
    assert event.related.ip == ["10.1.0.9", "203.0.113.200", "198.51.100.66"]


def test_fanout_event_counts_distinct_destinations() -> None:
    """The scanning event reports how many internal hosts were reached."""
    (event,) = [
        e for e in replay(session()) if e.rule.name == "cups_browsed_internal_fanout"
    ]
    assert event.flowtrap.distinct_destinations == 2
    assert event.flowtrap.details == {"internal_destinations": 20}
    assert event.network.direction == "internal"


def test_two_collectors_seeing_the_same_traffic_emit_the_same_ids() -> None:
    """event.id depends on detector, version, key and window, not on the collector."""
    first = sorted(e.event.id for e in replay(session(), exporter="192.0.2.1"))
    second = sorted(e.event.id for e in replay(session(), exporter="192.0.2.2"))
    assert first == second
    assert len(set(first)) == len(first)


def test_counts_carry_raw_and_sampled_packets_and_bytes() -> None:
    """With 1-in-10 sampling the scaled counts are ten times the exported ones."""
    windows = Windows()
    detector = InternalToExternal(context())
    for finding in detector.evaluate(
        make_flow("10.1.0.5", "203.0.113.10", sampling=10)
    ):
        windows.add(finding)
    event = to_event(windows.flush()[0], T0 + timedelta(minutes=5), 60)
    assert (event.flowtrap.packets, event.flowtrap.packets_scaled) == (3, 30)
    assert (event.flowtrap.bytes, event.flowtrap.bytes_scaled) == (300, 3000)


def test_community_id_is_the_same_for_both_directions_of_a_flow() -> None:
    """Community ID hashes the ordered 5-tuple, so the reply flow matches."""
    out = make_flow("10.1.0.9", "198.51.100.66", dport=8631, proto=6, sport=41000)
    back = make_flow("198.51.100.66", "10.1.0.9", dport=41000, proto=6, sport=8631)
    expected = communityid.CommunityID().calc(
        communityid.FlowTuple.make_tcp("10.1.0.9", "198.51.100.66", 41000, 8631)
    )
    assert community_id(out) == community_id(back) == expected


@pytest.mark.parametrize(
    ("severity", "severity_id"),
    [(21, 2), (47, 3), (73, 4), (99, 5), (5, 1)],
    ids=["low", "medium", "high", "critical", "informational"],
)
def test_ocsf_severity_follows_the_ecs_severity(
    severity: int, severity_id: int
) -> None:
    """The 0-100 severity maps onto OCSF's severity ids."""
    (event,) = [e for e in replay(session()) if e.rule.name.endswith("_internal")]
    changed = event.model_copy(
        update={"event": event.event.model_copy(update={"severity": severity})}
    )
    assert to_ocsf(changed)["severity_id"] == severity_id


def test_every_event_converts_to_a_valid_ocsf_detection_finding() -> None:
    """Each event is a Detection Finding (class 2004) with the same id and hosts."""
    for event in replay(session()) + captured_events():
        finding = to_ocsf(event)
        DetectionFinding.model_validate(finding)
        assert finding["class_uid"] == 2004
        assert finding["category_uid"] == 2
        assert finding["type_uid"] == 200401
        assert finding["finding_info"]["uid"] == event.event.id
        assert finding["metadata"]["uid"] == event.event.id
        evidence = finding["evidences"][0]
        assert evidence["src_endpoint"]["ip"] == event.source.ip
        assert evidence["dst_endpoint"]["ip"] == event.destination.ip
        assert (
            evidence["connection_info"]["community_uid"] == event.network.community_id
        )
        assert finding["unmapped"]["flowtrap"]["flows"] == event.flowtrap.flows
        assert [v["cve"]["uid"] for v in finding["vulnerabilities"]] == list(
            event.vulnerability.id
        )


def test_ocsf_pairs_techniques_with_their_tactics() -> None:
    """Recon pairs with vulnerability scanning; initial access with the exploit."""
    (event,) = [
        e for e in replay(session()) if e.rule.name == "cups_browsed_external_internal"
    ]
    attacks = to_ocsf(event)["finding_info"]["attacks"]
    pairs = [(a["tactic"]["uid"], a["technique"]["uid"]) for a in attacks]
    assert pairs == [("TA0043", "T1595.002"), ("TA0001", "T1190")]


@pytest.mark.parametrize(
    ("protocol", "src", "dst", "sport", "dport"),
    [
        (17, "10.1.0.5", "203.0.113.9", 40001, 631),
        (17, "203.0.113.9", "10.1.0.5", 631, 40001),
        (6, "10.1.0.9", "198.51.100.66", 41500, 80),
        (6, "10.1.0.9", "10.1.0.9", 80, 41500),
        (47, "10.0.0.1", "10.0.0.2", None, None),
        (17, "2001:db8::1", "2001:db8::2", 5353, 631),
        (132, "2001:db8::2", "2001:db8::1", 2905, 2905),
        # ICMP: the library maps type and code, and a one-way type is not flipped.
        (1, "198.51.100.7", "10.0.0.1", 8, 0),
        (1, "198.51.100.7", "10.0.0.1", 0, 0),
        (1, "198.51.100.7", "10.0.0.1", 3, 1),
        (58, "2001:db8::9", "2001:db8::1", 128, 0),
        (58, "2001:db8::9", "2001:db8::1", 1, 4),
    ],
)
def test_community_id_agrees_with_the_library_s_own_calculation(
    protocol: int, src: str, dst: str, sport: int | None, dport: int | None
) -> None:
    """The shortcut through the library gives what its calc() gives."""
    flow = make_flow(src, dst, dport or 0, protocol).model_copy(
        update={"src_port": sport, "dst_port": dport}
    )
    assert flow.src_addr is not None
    assert flow.dst_addr is not None
    expected = communityid.CommunityID().calc(
        communityid.FlowTuple(
            protocol,
            str(flow.src_addr),
            str(flow.dst_addr),
            sport if protocol in communityid.PORT_PROTOS else None,
            dport if protocol in communityid.PORT_PROTOS else None,
        )
    )
    assert community_id(flow) == expected


@given(
    st.sampled_from([1, 6, 17, 58, 132]),
    st.ip_addresses(v=4) | st.ip_addresses(v=6),
    st.ip_addresses(v=4) | st.ip_addresses(v=6),
    st.integers(0, 65535),
    st.integers(0, 65535),
)
def test_community_id_agrees_with_the_library_on_any_tuple(
    protocol: int, src: Any, dst: Any, sport: int, dport: int
) -> None:
    """Either order of endpoints, equal addresses, any ports."""
    if src.version != dst.version:
        dst = src
    flow = make_flow(str(src), str(dst), dport, protocol).model_copy(
        update={"src_port": sport}
    )
    expected = communityid.CommunityID().calc(
        communityid.FlowTuple(protocol, str(src), str(dst), sport, dport)
    )
    assert community_id(flow) == expected


class KeepDocuments:
    """A sink that keeps the documents the pipeline builds, as they are."""

    def __init__(self) -> None:
        """Start empty."""
        self.documents: list[dict[str, Any]] = []

    def write(self, event: dict[str, Any]) -> None:
        """Keep one document."""
        self.documents.append(event)

    def close(self) -> None:
        """Nothing to release."""


def test_event_documents_are_what_the_event_model_writes() -> None:
    """Every document equals, byte for byte, the model's own JSON form of it."""
    sink = KeepDocuments()
    pipeline = Pipeline(Decoder(), build(ALL, context()), Windows(), [sink])
    pipeline.feed(Datagram("192.0.2.1", 2055, EXPORT_SECS, export(template=True)))
    for n, data in enumerate(session()):
        pipeline.feed(Datagram("192.0.2.1", 2055, EXPORT_SECS + n, data))
    pipeline.flush()
    assert {doc["rule"]["name"] for doc in sink.documents} == set(ALL)
    for doc in sink.documents:
        model = Event.model_validate(doc)
        assert orjson.dumps(doc) == orjson.dumps(
            model.model_dump(mode="json", by_alias=True)
        )


def test_a_live_pipeline_writes_events_in_slices_and_all_at_flush(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a wake hook, closed windows wait; slices and flush write every one."""
    import collector.pipeline

    monkeypatch.setattr(collector.pipeline, "MAX_PENDING_EVENTS", 5)
    sink = KeepDocuments()
    woken: list[int] = []
    pipeline = Pipeline(Decoder(), build(ALL, context()), Windows(), [sink])
    pipeline.wake = lambda: woken.append(len(pipeline.pending))
    pipeline.feed(Datagram("192.0.2.1", 2055, EXPORT_SECS, export(template=True)))
    for n, data in enumerate(session()):
        pipeline.feed(Datagram("192.0.2.1", 2055, EXPORT_SECS + n, data))
    # Far past every window's end: all close, more than the cap lets wait.
    pipeline.advance(EXPORT_SECS + 3600)
    closed = len(sink.documents) + len(pipeline.pending)
    assert closed > 6
    assert woken == [5]
    assert len(pipeline.pending) == 5
    assert pipeline.write_pending(2) == 3
    pipeline.flush()
    assert not pipeline.pending
    assert len(sink.documents) == closed
    assert len({doc["event"]["id"] for doc in sink.documents}) == closed


class WebWatcher:
    """A detector that wants TCP/80 only, and finds nothing."""

    rule = InternalToExternal.rule
    interest = Interest(protocols=frozenset({6}), dst_ports=frozenset({80}))

    def __init__(self) -> None:
        """Count what it is shown."""
        self.seen = 0

    def evaluate(self, flow: FlowRecord) -> tuple[()]:
        """Count the flow."""
        self.seen += 1
        return ()


def test_pipelines_with_different_detectors_share_layouts_but_not_sieves() -> None:
    """v5's layout serves every decoder; each pipeline keeps its own sieve on it."""
    packets = [d.data for d in read_capture(EXPORTS / "softflowd-v5.pcap")]
    watcher = WebWatcher()
    first = Pipeline(Decoder(), [watcher], Windows(), [KeepDocuments()])
    sink = KeepDocuments()
    second = Pipeline(
        Decoder(),
        build(["cups_browsed_internal_external"], context()),
        Windows(),
        [sink],
    )
    for pipeline in (first, second):
        for data in packets:
            pipeline.feed(Datagram("192.0.2.1", 2055, EXPORT_SECS, data))
        pipeline.flush()
    assert watcher.seen == 0
    assert sink.documents, "the egress detector saw the UDP/631 flows"


class Narrow(KeepDocuments):
    """A sink with a queue of its own: it takes only what it has room for."""

    def __init__(self, room: int) -> None:
        """Start with room for ``room`` events."""
        super().__init__()
        self.free = room

    def room(self) -> int:
        """Return the room left."""
        return self.free

    def write(self, event: dict[str, Any]) -> None:
        """Keep one event, using room."""
        assert self.free > 0, "written past the room it had"
        self.free -= 1
        super().write(event)


def test_waiting_events_are_held_back_while_an_output_is_full() -> None:
    """Events wait in the pipeline rather than overflow an output's queue."""
    sink = Narrow(room=3)
    pipeline = Pipeline(Decoder(), build(ALL, context()), Windows(), [sink])
    pipeline.wake = lambda: None
    pipeline.feed(Datagram("192.0.2.1", 2055, EXPORT_SECS, export(template=True)))
    for n, data in enumerate(session()):
        pipeline.feed(Datagram("192.0.2.1", 2055, EXPORT_SECS + n, data))
    pipeline.advance(EXPORT_SECS + 3600)
    waiting = len(pipeline.pending)
    assert waiting > 3
    assert pipeline.write_pending(64) == waiting - 3
    assert pipeline.write_pending(64) == waiting - 3
    sink.free = 100
    assert pipeline.write_pending(64) == 0
    assert len(sink.documents) == waiting
