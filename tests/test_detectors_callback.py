"""The CUPS callback detector: flow-level correlation, and the pipeline's watch.

A probe is UDP/631 from an external host X to an internal host V; the callback
is TCP from V to X afterwards. The pipeline builds TCP flow records only for
watched sources, and looks back over recent rows when a source becomes watched.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from collector.capture import Datagram
from collector.decoder import Decoder
from collector.pipeline import Pipeline
from detectors.base import Finding, Interest, Rule, SourceWatch
from detectors.cups_callback import MAX_CONNECTIONS_PER_HOST, Callback
from detectors.registry import build
from detectors.windows import Windows
from schemas.event import Document, Event
from schemas.flow import FlowRecord
from tests.packets import (
    FIVE_TUPLE_FIELDS,
    flowset,
    ipv4,
    template_record,
    u8,
    u16,
    u32,
    v9_header,
)
from tests.test_detectors_cups import T0, context, fired, make_flow

PROBER = "198.51.100.66"
VICTIM = "10.1.0.9"


def probe(at: float = 0.0, src: str = PROBER, trusted: bool = True) -> FlowRecord:
    """The UDP/631 probe from ``src`` to the victim."""
    return make_flow(
        src, VICTIM, dport=631, proto=17, at=at, sport=40010, trusted=trusted
    )


def connect(
    at: float, dst: str = PROBER, dport: int = 8631, sport: int = 41000, **kw: Any
) -> FlowRecord:
    """A TCP flow from the victim."""
    return make_flow(VICTIM, dst, dport=dport, proto=6, at=at, sport=sport, **kw)


def detector(**settings: Any) -> Callback:
    """The callback detector with default networks and the given settings."""
    return Callback(context(cups_browsed_callback=settings))


def test_connection_to_the_prober_after_the_probe_is_high_severity() -> None:
    """TCP from V to X two seconds after X probed V is the successful trigger."""
    (finding,) = fired(detector(), probe(), connect(2))
    assert finding.effective_severity == 73
    assert finding.key == (VICTIM, PROBER)
    assert finding.details["probe_source"] == PROBER
    assert finding.details["delay_seconds"] == 2.0
    assert "2.0 s after" in finding.message


def test_callback_on_the_ipp_default_port_counts() -> None:
    """An ipp:// URL without a port makes the callback TCP/631."""
    assert fired(detector(), probe(), connect(1, dport=631))


def test_connection_that_started_before_the_probe_is_not_a_callback() -> None:
    """By flow start times, V was already talking to X: no callback."""
    assert not fired(detector(), probe(at=100), connect(50))


def test_small_clock_skew_between_probe_and_callback_is_tolerated() -> None:
    """A callback seeming to start a moment before its probe still follows it."""
    assert fired(detector(), probe(at=100), connect(99.6))


def test_connection_that_started_well_before_the_probe_is_not_a_callback() -> None:
    """TCP to the prober a second before the probe was already going on."""
    assert not fired(detector(), probe(at=100), connect(99))


def test_callback_window_is_measured_by_flow_start() -> None:
    """15 minutes by default; a later connection is not a callback."""
    assert fired(detector(), probe(), connect(899))
    assert not fired(detector(), probe(), connect(901))
    assert not fired(detector(window_seconds=60), probe(), connect(61))


def test_late_probe_matches_a_connection_already_seen() -> None:
    """A probe arriving after the connection it caused still correlates."""
    det = detector()
    assert not fired(det, probe(at=0, src="203.0.113.7"), connect(500, dport=443))
    (finding,) = fired(det, probe(at=490))
    assert finding.key == (VICTIM, PROBER)
    assert finding.effective_severity == 73


def test_new_address_variant_is_medium_and_names_the_prober() -> None:
    """TCP to a new external host shortly after a probe is the medium variant."""
    (finding,) = fired(detector(), probe(), connect(5, dst="203.0.113.50", dport=80))
    assert finding.effective_severity == 47
    assert finding.key == (VICTIM, "203.0.113.50")
    assert finding.related == (PROBER,)
    assert "new external host 203.0.113.50" in finding.message


def test_new_address_variant_needs_a_new_address_soon_after() -> None:
    """A host V talked to before the probe, or a connection after a minute, is quiet."""
    det = detector()
    before = connect(-100, dst="203.0.113.50", dport=443, sport=41001)
    assert not fired(det, probe(at=-200), before, probe(), connect(5, "203.0.113.50"))
    assert not fired(detector(), probe(), connect(61, dst="203.0.113.51"))
    assert not fired(
        detector(new_address_seconds=0), probe(), connect(5, "203.0.113.52")
    )


def test_variant_upgrades_to_high_when_the_prober_s_probe_arrives() -> None:
    """The same flow first looks like the variant, then matches a late probe."""
    det = detector()
    first = fired(det, probe(src="203.0.113.7"), connect(5))
    upgrade = fired(det, probe(at=3))
    assert [f.effective_severity for f in first + upgrade] == [47, 73]
    assert upgrade[0].counts is False


def test_reply_side_of_an_inbound_connection_is_ignored() -> None:
    """V:631 → X:high port is V answering X, not V calling out."""
    assert not fired(detector(), probe(), connect(2, dport=50000, sport=631))


def test_connections_to_internal_hosts_and_unprobed_hosts_are_ignored() -> None:
    """Only probed hosts calling external addresses count."""
    assert not fired(detector(), probe(), connect(2, dst="10.1.0.1"))
    other = make_flow("10.1.0.10", PROBER, dport=8631, proto=6, at=2)
    assert not fired(detector(), probe(), other)


def test_untrusted_times_correlate_both_ways_around_the_export_time() -> None:
    """Untrusted flows carry export times, so order cannot be told."""
    det = detector()
    (finding,) = fired(det, probe(at=10, trusted=False), connect(4, trusted=False))
    assert finding.details["times_trusted"] is False
    assert "near the time" in finding.message


def test_a_flow_delivered_twice_is_reported_once() -> None:
    """The pipeline's look back may deliver a flow again; it counts once."""
    det = detector()
    assert len(fired(det, probe(), connect(2), connect(2))) == 1


def test_allowlisted_prober_arms_nothing() -> None:
    """An authorised scanner's probes do not make their targets watched."""
    det = detector(allow_sources=["198.51.100.0/24"])
    assert not fired(det, probe(), connect(2))
    assert not det.watch.members


def test_probed_hosts_are_watched_capped_and_expire() -> None:
    """The watch follows the host state: capped, and emptied by the clock.

    Connections do not keep a host watched; only probes do.
    """
    det = detector(max_tracked=2, late_seconds=0)
    for n in range(1, 4):
        fired(det, make_flow(PROBER, f"10.1.0.{n}", dport=631, proto=17))
    assert len(det.watch.members) == 2
    assert det.counters["hosts_evicted"] == 1
    det.tick(T0)
    fired(det, connect(600))
    det.tick(T0 + timedelta(seconds=901))
    assert not det.watch.members
    assert det.counters["hosts_expired"] == 2


def test_connections_per_host_are_capped() -> None:
    """A busy probed host keeps only its latest connections."""
    det = detector()
    fired(det, probe())
    for n in range(MAX_CONNECTIONS_PER_HOST + 5):
        fired(det, connect(1000 + n, dst="203.0.113.60", sport=42000 + n))
    assert det.counters["connections_dropped"] == 5


# --- the pipeline: watched sources on raw rows, and the look back -------------

EXPORT_SECS = int(T0.timestamp()) + 60
UPTIME_MS = 3_600_000
TIMED_FIELDS = (*FIVE_TUPLE_FIELDS, (22, 4), (21, 4))  # + start, end sysUpTime


def row(src: str, dst: str, sport: int, dport: int, proto: int, at: float) -> bytes:
    """One record: five-tuple, then start and end ``at`` seconds after T0."""
    uptime = UPTIME_MS - (EXPORT_SECS - int(T0.timestamp()) - at) * 1000
    return (
        ipv4(src)
        + ipv4(dst)
        + u16(sport)
        + u16(dport)
        + u8(proto)
        + u32(3)  # packets
        + u32(300)  # bytes
        + u32(int(uptime))  # flowStartSysUpTime
        + u32(int(uptime) + 1000)  # flowEndSysUpTime
    )


def export(*records: bytes, template: bool = False) -> bytes:
    """A v9 export packet with the template and/or data records."""
    sets = flowset(0, template_record(256, TIMED_FIELDS)) if template else b""
    if records:
        sets += flowset(256, b"".join(records))
    return v9_header(uptime=UPTIME_MS, secs=EXPORT_SECS) + sets


PROBE_ROW = row(PROBER, VICTIM, 40010, 631, 17, 0.0)
CALLBACK_ROW = row(VICTIM, PROBER, 41000, 8631, 6, 2.0)
OTHER_TCP_ROW = row("10.1.0.5", "203.0.113.80", 40200, 443, 6, 1.0)


class Keep:
    """A sink that keeps events in memory."""

    def __init__(self) -> None:
        """Start empty."""
        self.events: list[Event] = []

    def write(self, event: Document) -> None:
        """Keep one event, validated into the model."""
        self.events.append(Event.model_validate(event))

    def close(self) -> None:
        """Nothing to release."""


def run(
    *packets: bytes, names: Iterable[str] = ("cups_browsed_callback",)
) -> list[Event]:
    """Feed export packets, one second apart, through a pipeline; return events."""
    sink = Keep()
    pipeline = Pipeline(Decoder(), build(names, context()), Windows(), [sink])
    pipeline.feed(Datagram("192.0.2.1", 2055, EXPORT_SECS, export(template=True)))
    for n, data in enumerate(packets):
        pipeline.feed(Datagram("192.0.2.1", 2055, EXPORT_SECS + n, data))
    pipeline.flush()
    return sink.events


def test_pipeline_raises_the_callback_when_probe_comes_first() -> None:
    """Probe then callback in arrival order gives one high-severity event."""
    (event,) = run(export(PROBE_ROW), export(CALLBACK_ROW))
    assert (event.source.ip, event.destination.ip) == (VICTIM, PROBER)
    assert event.destination.port == 8631
    assert event.event.severity == 73


def test_pipeline_looks_back_for_a_callback_exported_before_its_probe() -> None:
    """UDP flows wait for their idle timeout, so the callback often arrives first."""
    (same_packet,) = run(export(CALLBACK_ROW, OTHER_TCP_ROW, PROBE_ROW))
    (earlier_packet,) = run(export(CALLBACK_ROW), export(OTHER_TCP_ROW, PROBE_ROW))
    assert same_packet.event.id == earlier_packet.event.id
    assert same_packet.flowtrap.flows == 1


class Recorder:
    """A detector that wants only TCP from watched sources, and records them."""

    rule = Rule(
        "recorder", 1, "Records flows.", "https://example.invalid/", 0, 0.0, (), ()
    )

    def __init__(self, lookback_seconds: float = 60.0) -> None:
        """Watch nothing yet."""
        self.watch = SourceWatch(frozenset({6}), lookback_seconds)
        self.interest = Interest(frozenset(), frozenset(), self.watch)
        self.seen: list[str] = []

    def evaluate(self, flow: FlowRecord) -> list[Finding]:
        """Record the flow's source."""
        self.seen.append(str(flow.src_addr))
        return []


def recorder_pipeline(recorder: Recorder) -> Pipeline:
    """A pipeline with only the recorder, its template learned."""
    pipeline = Pipeline(Decoder(), [recorder], Windows(), [])
    pipeline.feed(Datagram("192.0.2.1", 2055, EXPORT_SECS, export(template=True)))
    return pipeline


def test_only_tcp_rows_from_watched_sources_become_flow_records() -> None:
    """The raw-row test lets through the watched host's TCP, nothing else."""
    recorder = Recorder()
    pipeline = recorder_pipeline(recorder)
    recorder.watch.add(make_flow(VICTIM, PROBER).src_addr)  # type: ignore[arg-type]
    recorder.watch.take_fresh()
    udp_from_victim = row(VICTIM, PROBER, 41001, 53, 17, 1.0)
    pipeline.feed(
        Datagram(
            "192.0.2.1",
            2055,
            EXPORT_SECS,
            export(CALLBACK_ROW, OTHER_TCP_ROW, udp_from_victim),
        )
    )
    assert recorder.seen == [VICTIM]


def test_look_back_replays_rows_of_a_newly_watched_source_within_its_age() -> None:
    """Rows kept from before the watch began reach the detector, if recent enough."""
    for delay, expected in ((30, [VICTIM]), (90, [])):
        recorder = Recorder(lookback_seconds=60)
        pipeline = recorder_pipeline(recorder)
        pipeline.feed(Datagram("192.0.2.1", 2055, EXPORT_SECS, export(CALLBACK_ROW)))
        recorder.watch.add(make_flow(VICTIM, PROBER).src_addr)  # type: ignore[arg-type]
        pipeline.feed(
            Datagram("192.0.2.1", 2055, EXPORT_SECS + delay, export(OTHER_TCP_ROW))
        )
        assert recorder.seen == expected
