"""The CUPS UDP/631 detectors on flow records: egress, inbound probe, fan-out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from detectors.base import DetectionContext, DetectorConfigError, Finding
from detectors.cups import ExternalToInternal, InternalToExternal
from detectors.cups_fanout import InternalFanout
from detectors.networks import Networks
from detectors.registry import UnknownDetectorError, build
from schemas.flow import FlowRecord

T0 = datetime(2026, 1, 15, 10, 0, 5, tzinfo=UTC)

ALL = [
    "cups_browsed_internal_external",
    "cups_browsed_external_internal",
    "cups_browsed_callback",
    "cups_browsed_internal_fanout",
]


def make_flow(
    src: str,
    dst: str,
    dport: int = 631,
    proto: int = 17,
    at: float = 0.0,
    sport: int = 40000,
    trusted: bool = True,
    sampling: int | None = None,
) -> FlowRecord:
    """A flow record starting ``at`` seconds after T0, lasting one second."""
    start = T0 + timedelta(seconds=at)
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
        packets=3,
        bytes=300,
        start=start,
        end=start + timedelta(seconds=1),
        time_trusted=trusted,
        export_time=start + timedelta(seconds=30),
        sampling_interval=sampling,
    )


def context(**options: dict[str, Any]) -> DetectionContext:
    """A context with the default internal networks and per-detector settings."""
    return DetectionContext(Networks(), options)


def fired(detector: Any, *flows: FlowRecord) -> list[Finding]:
    """Evaluate flows in order and return every finding."""
    return [finding for flow in flows for finding in detector.evaluate(flow)]


# --- cups_browsed_internal_external -------------------------------------------


@pytest.mark.parametrize(
    ("record", "fires"),
    [
        pytest.param(make_flow("10.1.0.5", "203.0.113.10"), True, id="egress"),
        pytest.param(
            make_flow("10.1.0.7", "10.1.0.255", sport=631), False, id="browse_bcast"
        ),
        pytest.param(
            make_flow("10.1.0.7", "255.255.255.255", sport=631),
            False,
            id="browse_limited_broadcast",
        ),
        pytest.param(
            make_flow("10.1.0.7", "10.1.0.8", sport=631), False, id="browse_internal"
        ),
        pytest.param(
            make_flow("10.1.0.7", "239.255.255.250"), False, id="multicast_dest"
        ),
        pytest.param(make_flow("10.1.0.7", "127.0.0.1"), False, id="loopback_dest"),
    ],
)
def test_egress_ignores_the_browse_pattern_and_non_unicast(
    record: FlowRecord, fires: bool
) -> None:
    """631 → 631 toward broadcast or internal hosts is legitimate browsing."""
    detector = InternalToExternal(context())
    assert bool(fired(detector, record)) is fires


def test_egress_escalates_a_source_reaching_many_external_hosts() -> None:
    """Past the threshold the source's findings become one high-severity key."""
    detector = InternalToExternal(
        context(cups_browsed_internal_external={"escalate_destinations": 3})
    )
    findings = fired(
        detector,
        *(make_flow("10.1.0.5", f"203.0.113.{n}", at=n) for n in range(1, 5)),
    )
    assert [f.key for f in findings] == [
        ("10.1.0.5", "203.0.113.1"),
        ("10.1.0.5", "203.0.113.2"),
        ("10.1.0.5",),
        ("10.1.0.5",),
    ]
    assert [f.effective_severity for f in findings] == [47, 47, 73, 73]
    assert findings[2].details == {"external_destinations": 3}


def test_egress_escalation_needs_the_destinations_within_the_window() -> None:
    """Destinations spread wider than the window never escalate."""
    detector = InternalToExternal(
        context(
            cups_browsed_internal_external={
                "escalate_destinations": 3,
                "escalate_window_seconds": 60,
            }
        )
    )
    findings = fired(
        detector,
        *(make_flow("10.1.0.5", f"203.0.113.{n}", at=n * 100) for n in range(1, 6)),
    )
    assert all(f.effective_severity == 47 for f in findings)


def test_egress_escalation_counts_flows_arriving_out_of_order() -> None:
    """A late flow that started among the others still counts toward the threshold."""
    detector = InternalToExternal(
        context(cups_browsed_internal_external={"escalate_destinations": 3})
    )
    findings = fired(
        detector,
        make_flow("10.1.0.5", "203.0.113.1", at=100),
        make_flow("10.1.0.5", "203.0.113.2", at=120),
        make_flow("10.1.0.5", "203.0.113.3", at=10),
    )
    assert findings[-1].key == ("10.1.0.5",)


def test_egress_allowlisted_scanner_is_counted_not_flagged() -> None:
    """An authorised scanner's source network raises nothing."""
    detector = InternalToExternal(
        context(cups_browsed_internal_external={"allow_sources": ["10.9.0.0/16"]})
    )
    assert not fired(detector, make_flow("10.9.0.5", "203.0.113.10"))
    assert fired(detector, make_flow("10.1.0.5", "203.0.113.10"))
    assert detector.counters["allowlisted"] == 1


def test_egress_state_is_capped_and_expires() -> None:
    """State holds at most max_tracked sources, and expires idle by the clock."""
    detector = InternalToExternal(
        context(cups_browsed_internal_external={"max_tracked": 2, "late_seconds": 0})
    )
    fired(detector, *(make_flow(f"10.1.0.{n}", "203.0.113.10") for n in range(1, 5)))
    assert len(detector.reached) == 2
    assert detector.counters["sources_evicted"] == 2
    detector.tick(T0)
    detector.tick(T0 + timedelta(seconds=300))
    assert len(detector.reached) == 2
    detector.tick(T0 + timedelta(seconds=301))
    assert len(detector.reached) == 0


# --- cups_browsed_external_internal -------------------------------------------


@pytest.mark.parametrize(
    ("record", "fires"),
    [
        pytest.param(make_flow("198.51.100.20", "10.1.0.5"), True, id="probe"),
        pytest.param(
            make_flow("2001:db8::20", "fd00:1::5"), True, id="probe_over_ipv6"
        ),
        pytest.param(
            make_flow("198.51.100.20", "10.255.255.255"),
            False,
            id="directed_broadcast",
        ),
        pytest.param(make_flow("198.51.100.20", "224.0.0.251"), False, id="multicast"),
        pytest.param(make_flow("10.1.0.6", "10.1.0.5"), False, id="internal_source"),
        pytest.param(
            make_flow("198.51.100.20", "203.0.113.5"), False, id="external_dest"
        ),
        pytest.param(
            make_flow("198.51.100.20", "10.1.0.5", proto=6), False, id="tcp_631"
        ),
        pytest.param(
            make_flow("198.51.100.20", "10.1.0.5", dport=53), False, id="other_port"
        ),
    ],
)
def test_inbound_probe_fires_on_external_to_internal_unicast_udp_631(
    record: FlowRecord, fires: bool
) -> None:
    """Only UDP/631 from outside to one inside host is a probe."""
    detector = ExternalToInternal(context())
    assert bool(fired(detector, record)) is fires


def test_inbound_probe_is_low_severity_and_inbound() -> None:
    """The probe alone is low severity, grouped per source."""
    (finding,) = fired(
        ExternalToInternal(context()), make_flow("198.51.100.20", "10.1.0.5")
    )
    assert finding.effective_severity == 21
    assert finding.direction == "inbound"
    assert finding.key == ("198.51.100.20",)


def test_inbound_probes_from_one_source_are_suppressed_after_the_burst() -> None:
    """A burst joins one event; later probes are counted until suppression ends."""
    detector = ExternalToInternal(
        context(
            cups_browsed_external_internal={
                "burst_seconds": 60,
                "suppress_seconds": 3600,
            }
        )
    )
    times = [0, 30, 300, 3000, 3700]
    findings = fired(
        detector, *(make_flow("198.51.100.20", "10.1.0.5", at=t) for t in times)
    )
    assert [f.flow.start for f in findings] == [
        T0,
        T0 + timedelta(seconds=30),
        T0 + timedelta(seconds=3700),
    ]
    assert detector.counters["suppressed"] == 2


def test_inbound_suppression_is_per_source() -> None:
    """Another source's probe is not suppressed by the first one's."""
    detector = ExternalToInternal(context())
    findings = fired(
        detector,
        make_flow("198.51.100.20", "10.1.0.5", at=0),
        make_flow("198.51.100.21", "10.1.0.5", at=300),
    )
    assert len(findings) == 2


def test_inbound_probe_arriving_late_is_suppressed_by_flow_time() -> None:
    """Suppression compares flow starts, so an old probe arriving last is suppressed."""
    detector = ExternalToInternal(context())
    findings = fired(
        detector,
        make_flow("198.51.100.20", "10.1.0.5", at=1000),
        make_flow("198.51.100.20", "10.1.0.6", at=500),
    )
    assert len(findings) == 1
    assert detector.counters["suppressed"] == 1


def test_inbound_allowlisted_destination_is_ignored() -> None:
    """A destination network on the allowlist (a honeypot) raises nothing."""
    detector = ExternalToInternal(
        context(cups_browsed_external_internal={"allow_destinations": ["10.1.0.0/24"]})
    )
    assert not fired(detector, make_flow("198.51.100.20", "10.1.0.5"))


def test_inbound_suppression_state_is_capped_and_expires() -> None:
    """Sources past max_tracked evict the oldest; the clock ends their periods."""
    detector = ExternalToInternal(
        context(cups_browsed_external_internal={"max_tracked": 2, "late_seconds": 0})
    )
    fired(detector, *(make_flow(f"198.51.100.{n}", "10.1.0.5") for n in range(1, 5)))
    assert len(detector.bursts) == 2
    assert detector.counters["sources_evicted"] == 2
    detector.tick(T0)
    detector.tick(T0 + timedelta(seconds=3601))
    assert len(detector.bursts) == 0


# --- cups_browsed_internal_fanout ---------------------------------------------


def scan(count: int, spacing: float = 1.0, src: str = "10.1.0.5") -> list[FlowRecord]:
    """UDP/631 from one internal host to ``count`` internal hosts."""
    return [
        make_flow(src, f"10.2.{n // 250}.{n % 250 + 1}", at=n * spacing)
        for n in range(count)
    ]


def test_fanout_fires_at_the_threshold_of_internal_destinations() -> None:
    """The 20th internal destination within five minutes raises the finding."""
    detector = InternalFanout(context())
    findings = fired(detector, *scan(21))
    assert len(findings) == 2
    assert findings[0].details == {"internal_destinations": 20}
    assert findings[0].key == ("10.1.0.5",)
    assert findings[0].direction == "internal"


def test_fanout_below_threshold_or_spread_out_is_quiet() -> None:
    """19 destinations, or 25 spread over more than the window, raise nothing."""
    assert not fired(InternalFanout(context()), *scan(19))
    assert not fired(InternalFanout(context()), *scan(25, spacing=20.0))


def test_fanout_threshold_and_window_come_from_settings() -> None:
    """A lower threshold fires sooner."""
    detector = InternalFanout(
        context(cups_browsed_internal_fanout={"destinations": 3, "window_seconds": 10})
    )
    assert len(fired(detector, *scan(3))) == 1


def test_fanout_ignores_browse_broadcasts_and_repeats() -> None:
    """631 → 631 browsing, broadcast targets and one host hit often never count."""
    detector = InternalFanout(context())
    browse = [make_flow("10.1.0.5", f"10.2.0.{n}", sport=631) for n in range(1, 40)]
    repeats = [make_flow("10.1.0.5", "10.2.0.1", at=n) for n in range(40)]
    broadcast = [make_flow("10.1.0.5", "10.255.255.255", at=n) for n in range(40)]
    assert not fired(detector, *browse, *repeats, *broadcast)


def test_fanout_counts_out_of_order_arrival() -> None:
    """The same flows in reverse arrival order still cross the threshold."""
    assert fired(InternalFanout(context()), *reversed(scan(20)))


def test_fanout_allowlisted_scanner_is_ignored() -> None:
    """An authorised scanner inside raises nothing."""
    detector = InternalFanout(
        context(cups_browsed_internal_fanout={"allow_sources": ["10.1.0.5/32"]})
    )
    assert not fired(detector, *scan(30))


def test_fanout_state_is_capped_and_expires() -> None:
    """Sources past max_tracked evict the oldest; the clock forgets old ones."""
    detector = InternalFanout(
        context(cups_browsed_internal_fanout={"max_tracked": 3, "late_seconds": 0})
    )
    for n in range(1, 6):
        fired(detector, *scan(2, src=f"10.1.0.{n}"))
    assert len(detector.reached) == 3
    assert detector.counters["sources_evicted"] == 2
    detector.tick(T0)
    detector.tick(T0 + timedelta(seconds=301))
    assert len(detector.reached) == 0


# --- settings and the registry ------------------------------------------------


def test_all_four_cups_detectors_are_registered_and_build() -> None:
    """The registry builds every CUPS detector by name."""
    detectors = build(ALL, context())
    assert [d.rule.name for d in detectors] == ALL


def test_disabled_detector_is_left_out() -> None:
    """enabled = false keeps a listed detector from running."""
    detectors = build(ALL, context(cups_browsed_callback={"enabled": False}))
    assert "cups_browsed_callback" not in [d.rule.name for d in detectors]


def test_severity_and_risk_score_can_be_overridden() -> None:
    """A detector's settings replace its rule's severity and risk score."""
    (detector,) = build(
        ["cups_browsed_external_internal"],
        context(cups_browsed_external_internal={"severity": 30, "risk_score": 35}),
    )
    assert (detector.rule.severity, detector.rule.risk_score) == (30, 35.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(
            {"cups_browsed_internal_fanout": {"destinations": 1}},
            "detection.detectors.cups_browsed_internal_fanout.destinations",
            id="threshold_too_low",
        ),
        pytest.param(
            {"cups_browsed_callback": {"window": 5}},
            "detection.detectors.cups_browsed_callback.window",
            id="unknown_key",
        ),
        pytest.param(
            {"cups_browsed_external_internal": {"allow_sources": ["10.0.0.0/33"]}},
            "allow_sources",
            id="bad_network",
        ),
    ],
)
def test_invalid_settings_stop_with_the_key_to_fix(
    options: dict[str, dict[str, Any]], message: str
) -> None:
    """Bad detector settings name the config key."""
    with pytest.raises(DetectorConfigError, match=message):
        build(ALL, context(**options))


def test_settings_for_an_unknown_detector_are_refused() -> None:
    """A settings table for a detector that does not exist is an error."""
    with pytest.raises(UnknownDetectorError, match="settings for unknown detector"):
        build(ALL, context(cups_browsed_typo={}))
