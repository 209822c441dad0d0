"""Flow records: times made absolute UTC from every encoding, sampling joined."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from collector.layout import FieldSpec, Layout
from collector.options import DomainOptions
from collector.records import TimeRules, build_flow, flow_times
from collector.templates import ExportContext
from schemas.flow import FlowRecord

EXPORT_MS = 1_768_471_200_000  # 2026-01-15T10:00:00Z


def context(uptime: int | None = 100_000, version: int = 9) -> ExportContext:
    """An export packet context exported at EXPORT_MS."""
    return ExportContext(
        exporter="192.0.2.1",
        port=2055,
        version=version,
        domain=0,
        export_time_ms=EXPORT_MS,
        sys_uptime=uptime,
        sequence=1,
        received=EXPORT_MS / 1000,
    )


def test_sysuptime_times_count_back_from_the_export_time() -> None:
    """v9 first/last switched are uptime ms before the header's uptime."""
    times = flow_times(
        {"flowStartSysUpTime": 90_000, "flowEndSysUpTime": 95_000}, context()
    )
    assert times == (EXPORT_MS - 10_000, EXPORT_MS - 5_000)


def test_uptime_wrap_at_49_days_is_handled() -> None:
    """A flow that started before the 32-bit uptime wrapped is still in the past."""
    before_wrap = 2**32 - 2_000
    times = flow_times(
        {"flowStartSysUpTime": before_wrap, "flowEndSysUpTime": 500},
        context(uptime=1_000),
    )
    assert times == (EXPORT_MS - 3_000, EXPORT_MS - 500)


def test_ipfix_sysuptime_uses_system_init_time_from_options() -> None:
    """IPFIX uptime stamps are offsets from systemInitTimeMilliseconds."""
    values = {"flowStartSysUpTime": 1_000, "flowEndSysUpTime": 3_000}
    times = flow_times(values, context(uptime=None, version=10), EXPORT_MS - 60_000)
    assert times == (EXPORT_MS - 59_000, EXPORT_MS - 57_000)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param(
            {"flowStartSeconds": 1_768_471_100, "flowEndSeconds": 1_768_471_150},
            (EXPORT_MS - 100_000, EXPORT_MS - 50_000),
            id="seconds",
        ),
        pytest.param(
            {"flowStartMilliseconds": EXPORT_MS - 1, "flowEndMilliseconds": EXPORT_MS},
            (EXPORT_MS - 1, EXPORT_MS),
            id="milliseconds",
        ),
        pytest.param(
            {
                # NTP era seconds for 2026-01-15T10:00:00Z, fraction one half.
                "flowStartMicroseconds": ((1_768_471_200 + 2_208_988_800) << 32)
                | 0x80000000,
                "flowEndMicroseconds": (1_768_471_201 + 2_208_988_800) << 32,
            },
            (EXPORT_MS + 500, EXPORT_MS + 1_000),
            id="ntp_microseconds",
        ),
        pytest.param(
            {
                "flowStartNanoseconds": (1_768_471_200 + 2_208_988_800) << 32,
                "flowEndNanoseconds": (1_768_471_200 + 2_208_988_800) << 32,
            },
            (EXPORT_MS, EXPORT_MS),
            id="ntp_nanoseconds",
        ),
        pytest.param(
            {"flowStartDeltaMicroseconds": 2_000_000, "flowEndDeltaMicroseconds": 0},
            (EXPORT_MS - 2_000, EXPORT_MS),
            id="delta_microseconds",
        ),
    ],
)
def test_absolute_time_encodings(
    values: dict[str, int], expected: tuple[int, int]
) -> None:
    """Every IPFIX absolute time encoding gives epoch milliseconds."""
    assert flow_times(values, context(uptime=None, version=10)) == expected


def _layout() -> Layout:
    """A layout with addresses, ports, protocol and uptime stamps."""
    return Layout.compile(
        256,
        (
            FieldSpec(8, 4),
            FieldSpec(12, 4),
            FieldSpec(11, 2),
            FieldSpec(4, 1),
            FieldSpec(22, 4),
            FieldSpec(21, 4),
        ),
    )


def test_time_far_from_export_time_is_flagged_not_trusted() -> None:
    """A start weeks before the export time is replaced and flagged."""
    layout = _layout()
    row = (b"\x0a\x00\x00\x01", b"\xcb\x00\x71\x09", 631, 17, 0, 100)
    flow = build_flow(layout, row, context(uptime=2_400_000_000), None, TimeRules())
    assert flow.time_trusted is False
    assert flow.start == datetime.fromtimestamp(EXPORT_MS / 1000, UTC)


def test_flow_record_carries_sampling_from_options() -> None:
    """The sampling interval an options record gave is on the flow record."""
    layout = _layout()
    row = (b"\x0a\x00\x00\x01", b"\xcb\x00\x71\x09", 631, 17, 99_000, 99_500)
    options = DomainOptions(sampling={0: 64})
    flow = build_flow(layout, row, context(), options)
    assert flow.sampling_interval == 64
    assert str(flow.src_addr) == "10.0.0.1"
    assert flow.dst_port == 631
    assert flow.time_trusted is True
    assert flow.start == datetime(2026, 1, 15, 9, 59, 59, tzinfo=UTC)


def test_cisco_asa_nsel_record_reads_event_time_and_initiator_counters() -> None:
    """NSEL: start plus event time, bytes from initiatorOctets, legacy xlate ids."""
    from pathlib import Path

    from collector.decoder import Decoder
    from tests.conftest import CAPTURES, require_corpus

    require_corpus()
    codecs = Path(CAPTURES) / "logstash-codec-netflow" / "spec" / "codecs"
    decoder = Decoder()
    flows = []
    for name in (
        "netflow9_test_cisco_asa_2_tpl_26x.dat",
        "netflow9_test_cisco_asa_2_tpl_27x.dat",
        "netflow9_test_cisco_asa_2_data.dat",
        "netflow9_test_cisco_asa_1_tpl.dat",
        "netflow9_test_cisco_asa_1_data.dat",
    ):
        out = decoder.decode((codecs / name).read_bytes(), "192.0.2.1", 2055, 2e9)
        flows += [build_flow(b.layout, r, b.context) for b in out.flows for r in b.rows]
    created = next(f for f in flows if f.fields.get("firewallEvent") == 2)
    assert created.bytes == created.fields["initiatorOctets"] == 81
    assert created.fields["responderOctets"] == 763
    assert created.time_trusted
    assert created.start is not None
    assert created.end is not None
    assert (created.end - created.start).total_seconds() == 0.06
    legacy = next(
        f
        for f in flows
        if "postNATSourceIPv4Address" in f.fields and f.fields.get("flowId") == 8500
    )
    assert legacy.fields["postNATSourceIPv4Address"] == "192.168.14.1"


def test_far_future_time_is_untrusted_whatever_the_tolerance() -> None:
    """A flow start in the year 292278994 never reaches a datetime."""
    layout = Layout.compile(256, (FieldSpec(152, 8), FieldSpec(153, 8)))
    row = (2**63 - 1, 2**63 - 1)
    flow = build_flow(layout, row, context(), None, TimeRules(tolerance_ms=10**18))
    assert flow.time_trusted is False


def test_times_far_ahead_of_arrival_fall_back_to_arrival() -> None:
    """A flow and export time in 2099 must not park its window in the future."""
    layout = Layout.compile(256, (FieldSpec(152, 8), FieldSpec(153, 8)))
    future_ms = 4_102_000_000_000
    arrived = ExportContext(
        exporter="192.0.2.1",
        port=2055,
        version=10,
        domain=0,
        export_time_ms=future_ms,
        sys_uptime=None,
        sequence=1,
        received=EXPORT_MS / 1000,
    )
    flow = build_flow(layout, (future_ms, future_ms), arrived)
    assert flow.time_trusted is False
    assert flow.start == datetime.fromtimestamp(EXPORT_MS / 1000, UTC)


def test_built_records_are_what_model_construct_makes() -> None:
    """The direct constructor leaves a record pydantic's own would leave."""
    layout = Layout.compile(
        256, (FieldSpec(8, 4), FieldSpec(12, 4), FieldSpec(4, 1), FieldSpec(11, 2))
    )
    flow = build_flow(
        layout, (b"\x0a\x00\x00\x01", b"\xcb\x00\x71\x05", 17, 631), context()
    )
    twin = FlowRecord.model_construct(**flow.__dict__)
    assert flow == twin
    assert flow.model_fields_set == twin.model_fields_set
    assert flow.model_dump(mode="json") == twin.model_dump(mode="json")
    assert (
        FlowRecord.model_validate(
            flow.model_dump(exclude={"packets_scaled", "bytes_scaled"})
        )
        == flow
    )
    # Nothing in the model that model_construct handles is left out here.
    assert not any(f.alias for f in FlowRecord.model_fields.values())
    assert not FlowRecord.__pydantic_post_init__


@pytest.mark.parametrize(
    ("src4", "src6", "expected"),
    [
        (bytes(4), bytes.fromhex("20010db8" + "00" * 11 + "05"), "2001:db8::5"),
        (bytes([10, 0, 0, 5]), bytes(16), "10.0.0.5"),
        (
            bytes([10, 0, 0, 5]),
            bytes.fromhex("20010db8" + "00" * 11 + "05"),
            "10.0.0.5",
        ),
        (bytes(4), bytes(16), "0.0.0.0"),
    ],
)
def test_a_template_with_both_families_takes_the_address_that_is_set(
    src4: bytes, src6: bytes, expected: str
) -> None:
    """Exporters that put IPv4 and IPv6 fields in one template zero the unused
    family; the flow's addresses are the ones it used."""
    layout = Layout.compile(
        256,
        (
            FieldSpec(8, 4),
            FieldSpec(12, 4),
            FieldSpec(27, 16),
            FieldSpec(28, 16),
            FieldSpec(4, 1),
            FieldSpec(11, 2),
        ),
    )
    dst6 = bytes.fromhex("20010db8" + "00" * 11 + "09") if src6 != bytes(16) else src6
    dst4 = bytes([203, 0, 113, 9]) if src4 != bytes(4) else src4
    flow = build_flow(layout, (src4, dst4, src6, dst6, 17, 631), context())
    assert str(flow.src_addr) == expected
    assert flow.src_addr is not None
    assert flow.dst_addr is not None
    assert flow.src_addr.version == flow.dst_addr.version


def test_an_element_sent_empty_then_with_a_value_keeps_its_name() -> None:
    """A zero-length field before the real one does not push it to ``#2``."""
    layout = Layout.compile(
        256, (FieldSpec(11, 0), FieldSpec(4, 1), FieldSpec(11, 2), FieldSpec(11, 2))
    )
    assert layout.names == (
        "protocolIdentifier",
        "destinationTransportPort",
        "destinationTransportPort#2",
    )
