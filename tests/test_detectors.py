"""Detectors, the registry and windows, on flow records alone."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detectors.base import DetectionContext
from detectors.cups import InternalToExternal
from detectors.events import to_event
from detectors.networks import Networks
from detectors.registry import UnknownDetectorError, build, known
from detectors.windows import Windows, WindowSettings
from schemas.flow import FlowRecord

T0 = datetime(2026, 1, 15, 10, 0, 5, tzinfo=UTC)


def flow(
    src: str,
    dst: str,
    dport: int = 631,
    proto: int = 17,
    start: datetime = T0,
    sport: int = 40000,
) -> FlowRecord:
    """A flow record with the fields the CUPS detectors read."""
    return FlowRecord(
        exporter="192.0.2.1",
        exporter_port=2055,
        version=10,
        observation_domain_id=0,
        src_addr=src,
        dst_addr=dst,
        src_port=sport,
        dst_port=dport,
        protocol=proto,
        packets=2,
        bytes=200,
        start=start,
        end=start + timedelta(seconds=1),
        export_time=start + timedelta(seconds=30),
        sampling_interval=10,
    )


@pytest.fixture
def detector() -> InternalToExternal:
    """The egress detector with the default internal networks."""
    return InternalToExternal(DetectionContext(Networks()))


@pytest.mark.parametrize(
    ("record", "fires"),
    [
        pytest.param(flow("10.1.0.5", "203.0.113.10"), True, id="ipv4_egress"),
        pytest.param(flow("fd00:1::5", "2001:db8::10"), True, id="ula_to_ipv6_egress"),
        pytest.param(
            flow("192.168.1.2", "198.51.100.7"), True, id="doc_range_external"
        ),
        pytest.param(flow("10.1.0.5", "10.1.0.6"), False, id="internal_to_internal"),
        pytest.param(
            flow("10.1.0.7", "255.255.255.255"), False, id="limited_broadcast"
        ),
        pytest.param(flow("10.1.0.7", "224.0.0.251"), False, id="multicast"),
        pytest.param(flow("10.1.0.7", "0.0.0.0"), False, id="unspecified"),
        pytest.param(flow("198.51.100.20", "10.1.0.5"), False, id="inbound_probe"),
        pytest.param(
            flow("10.1.0.5", "203.0.113.10", proto=6), False, id="tcp_631_is_not_udp"
        ),
        pytest.param(
            flow("10.1.0.5", "203.0.113.10", dport=53), False, id="other_port"
        ),
    ],
)
def test_internal_external_fires_only_on_egress_udp_631(
    detector: InternalToExternal, record: FlowRecord, fires: bool
) -> None:
    """Egress UDP/631 to an external unicast address is the only positive."""
    assert bool(list(detector.evaluate(record))) is fires


def test_custom_internal_networks_replace_the_defaults() -> None:
    """With an explicit list, 10/8 is no longer internal."""
    detector = InternalToExternal(DetectionContext(Networks(["192.0.2.0/24"])))
    assert list(detector.evaluate(flow("192.0.2.5", "10.1.0.9")))
    assert not list(detector.evaluate(flow("10.1.0.5", "203.0.113.10")))


def test_unknown_detector_name_stops_with_the_known_names() -> None:
    """An unknown name fails with a message listing the registered detectors."""
    with pytest.raises(UnknownDetectorError, match="cups_browsed_internal_external"):
        build(["no_such_detector"], DetectionContext(Networks()))
    assert "cups_browsed_internal_external" in known()


def test_findings_in_one_window_become_one_event(detector: InternalToExternal) -> None:
    """Three flows of one pair in one minute are one event with summed counts."""
    windows = Windows(WindowSettings(seconds=60))
    for offset in (0, 10, 20):
        record = flow("10.1.0.5", "203.0.113.10", start=T0 + timedelta(seconds=offset))
        for finding in detector.evaluate(record):
            windows.add(finding)
    closed = windows.flush()
    assert len(closed) == 1
    event = to_event(closed[0], T0 + timedelta(minutes=5), 60)
    assert event.flowtrap.flows == 3
    assert event.flowtrap.packets == 6
    assert event.flowtrap.bytes_scaled == 6000
    assert event.event.start == T0
    assert event.event.end == T0 + timedelta(seconds=21)
    assert event.threat.technique.id == ["T1133", "T1190"]


def test_event_id_is_deterministic_and_order_independent(
    detector: InternalToExternal,
) -> None:
    """The same findings in any order give the same event id."""
    records = [
        flow("10.1.0.5", "203.0.113.10", start=T0 + timedelta(seconds=s))
        for s in (0, 30, 50)
    ]
    ids = []
    for ordering in (records, list(reversed(records))):
        windows = Windows()
        for record in ordering:
            for finding in detector.evaluate(record):
                windows.add(finding)
        ids.append([w.event_id() for w in windows.flush()])
    assert ids[0] == ids[1]


def test_windows_close_by_clock_after_lateness(detector: InternalToExternal) -> None:
    """A window stays open for late flows, then closes when the clock passes."""
    windows = Windows(WindowSettings(seconds=60, lateness=30))
    for finding in detector.evaluate(flow("10.1.0.5", "203.0.113.10")):
        windows.add(finding)
    assert windows.close(T0 + timedelta(seconds=80)) == []
    assert len(windows.close(T0 + timedelta(seconds=100))) == 1


def test_window_cap_closes_oldest_early_without_loss(
    detector: InternalToExternal,
) -> None:
    """Past the open-window cap the oldest window is emitted early, not lost."""
    windows = Windows(WindowSettings(max_open=2))
    evicted = []
    for last in range(1, 5):
        for finding in detector.evaluate(flow("10.1.0.5", f"203.0.113.{last}")):
            evicted += windows.add(finding)
    assert len(evicted) == 2
    assert len(windows.flush()) == 2
    assert windows.early_closed == 2


def test_late_finding_after_close_gets_a_new_id(detector: InternalToExternal) -> None:
    """A finding for an already closed window opens a new, distinct event."""
    windows = Windows()
    record = flow("10.1.0.5", "203.0.113.10")
    for finding in detector.evaluate(record):
        windows.add(finding)
    first = windows.flush()[0].event_id()
    for finding in detector.evaluate(record):
        windows.add(finding)
    second = windows.flush()[0].event_id()
    assert first != second


def test_counter_sums_saturate_so_the_event_still_serialises(
    detector: InternalToExternal,
) -> None:
    """Two flows of 2**63 octets, sampled 1 in 2**31, still give a JSON event."""
    import orjson

    windows = Windows()
    for offset in (0, 1):
        record = flow(
            "10.1.0.5", "203.0.113.10", start=T0 + timedelta(seconds=offset)
        ).model_copy(update={"bytes": 2**63, "sampling_interval": 2**31})
        for finding in detector.evaluate(record):
            windows.add(finding)
    event = to_event(windows.flush()[0], T0, 60)
    assert event.flowtrap.bytes == 2**64 - 1
    assert event.flowtrap.bytes_scaled == 2**64 - 1
    assert orjson.dumps(event.model_dump(mode="json", by_alias=True))


def test_mapped_and_reserved_addresses(detector: InternalToExternal) -> None:
    """An IPv4-mapped internal source is internal; 240/4 is never a destination."""
    assert list(detector.evaluate(flow("::ffff:10.1.0.5", "203.0.113.10")))
    assert not list(detector.evaluate(flow("10.1.0.5", "240.0.0.1")))
    assert not list(detector.evaluate(flow("10.1.0.5", "::ffff:10.1.0.6")))


@given(
    st.lists(st.ip_addresses(v=4) | st.ip_addresses(v=6), max_size=40),
    st.lists(
        st.tuples(st.ip_addresses(v=4), st.integers(0, 32))
        | st.tuples(st.ip_addresses(v=6), st.integers(0, 128)),
        max_size=8,
    ),
)
def test_internal_is_membership_of_any_listed_network(
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
    listed: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]],
) -> None:
    """Overlapping, nested and adjacent networks of both versions alike.

    An IPv4-mapped IPv6 address is its IPv4 address.
    """
    nets = [ipaddress.ip_network(f"{a}/{bits}", strict=False) for a, bits in listed]
    networks = Networks(nets)
    for address in addresses + [net.broadcast_address for net in nets]:
        plain = (address.version == 6 and address.ipv4_mapped) or address
        expected = any(plain.version == net.version and plain in net for net in nets)
        assert networks.is_internal(address) is expected


def test_a_mapped_directed_broadcast_is_no_internal_host() -> None:
    """::ffff:10.255.255.255 is 10.255.255.255: a broadcast, not a host."""
    networks = Networks(["10.0.0.0/8"])
    for text in ("10.255.255.255", "::ffff:10.255.255.255"):
        assert networks.is_internal(ipaddress.ip_address(text))
        assert not networks.is_internal_unicast(ipaddress.ip_address(text))
    assert networks.is_internal_unicast(ipaddress.ip_address("::ffff:10.0.0.5"))
