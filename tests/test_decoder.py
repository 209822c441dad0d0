"""Protocol tests for the decoder: bytes in, rows and counters out, no sockets."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.decoder import Decoder
from collector.templates import Limits
from tests.packets import (
    FIVE_TUPLE_FIELDS,
    five_tuple,
    flowset,
    ipfix,
    template_record,
    u16,
    u32,
    v9_header,
)

EXPORTER = "192.0.2.1"


def decode(decoder: Decoder, data: bytes, exporter: str = EXPORTER) -> list[dict]:
    """Decode one export packet and return its flow records' values."""
    out = decoder.decode(data, exporter, 9995, 1_768_471_200.0)
    return [batch.layout.values(row) for batch in out.flows for row in batch.rows]


def v9_packet(*flowsets: bytes, source_id: int = 0) -> bytes:
    """A v9 export packet holding the given flowsets."""
    return v9_header(source_id=source_id) + b"".join(flowsets)


TEMPLATE_256 = flowset(0, template_record(256, FIVE_TUPLE_FIELDS))
DATA_256 = flowset(256, five_tuple("10.0.0.1", "203.0.113.9", 5000, 631))


def test_v9_template_then_data_decodes_fields_by_name() -> None:
    """A v9 template and its data in one packet give named fields."""
    records = decode(Decoder(), v9_packet(TEMPLATE_256, DATA_256))
    assert records == [
        {
            "sourceIPv4Address": "10.0.0.1",
            "destinationIPv4Address": "203.0.113.9",
            "sourceTransportPort": 5000,
            "destinationTransportPort": 631,
            "protocolIdentifier": 17,
            "packetDeltaCount": 1,
            "octetDeltaCount": 100,
        }
    ]


def test_data_before_template_in_same_packet_is_decoded() -> None:
    """Data ahead of its template in one packet (Juniper) is held, then decoded."""
    decoder = Decoder()
    records = decode(decoder, v9_packet(DATA_256, TEMPLATE_256))
    assert [r["destinationTransportPort"] for r in records] == [631]
    assert decoder.stats.counts["held_decoded"] == 1


def test_data_in_earlier_packet_is_decoded_when_template_arrives() -> None:
    """Data from an earlier packet is decoded when a later one brings its template."""
    decoder = Decoder()
    assert decode(decoder, v9_packet(DATA_256)) == []
    records = decode(decoder, v9_packet(TEMPLATE_256))
    assert len(records) == 1


def test_templates_of_two_exporters_never_mix() -> None:
    """The same template id from two exporters keeps two layouts."""
    decoder = Decoder()
    other = flowset(0, template_record(256, ((8, 4), (12, 4))))
    decode(decoder, v9_packet(TEMPLATE_256), exporter="192.0.2.1")
    decode(decoder, v9_packet(other), exporter="192.0.2.2")
    records = decode(decoder, v9_packet(DATA_256), exporter="192.0.2.1")
    assert records[0]["destinationTransportPort"] == 631


def test_templates_of_two_domains_never_mix() -> None:
    """The same template id in two v9 source ids keeps two layouts."""
    decoder = Decoder()
    other = flowset(0, template_record(256, ((8, 4), (12, 4))))
    decode(decoder, v9_packet(TEMPLATE_256, source_id=1))
    decode(decoder, v9_packet(other, source_id=2))
    records = decode(decoder, v9_packet(DATA_256, source_id=1))
    assert records[0]["destinationTransportPort"] == 631
    records = decode(decoder, v9_packet(DATA_256, source_id=2))
    assert "destinationTransportPort" not in records[0]


def test_options_records_are_kept_apart_from_flows() -> None:
    """v9 options data lands in options, never in flows."""
    options_template = flowset(
        1,
        u16(300)  # template id
        + u16(4)  # scope length, bytes
        + u16(8)  # option length, bytes
        + u16(1)  # scope: System
        + u16(4)  # scope length
        + u16(34)  # samplingInterval
        + u16(4)  # length
        + u16(35)  # samplingAlgorithm
        + u16(1)  # length
        + b"\x00\x00",  # padding
    )
    options_data = flowset(300, u32(7) + u32(100) + b"\x02" + b"\x00\x00\x00")
    decoder = Decoder()
    out = decoder.decode(v9_packet(options_template, options_data), EXPORTER, 1, 0.0)
    assert out.flows == []
    values = [b.layout.values(r) for b in out.options for r in b.rows]
    assert values == [
        {"scopeSystem": 7, "samplingInterval": 100, "samplingAlgorithm": 2}
    ]


def test_ipfix_template_withdrawal_removes_the_template() -> None:
    """An IPFIX template with field count 0 withdraws it (RFC 7011 §8.1)."""
    decoder = Decoder()
    template = flowset(2, template_record(256, FIVE_TUPLE_FIELDS))
    data = flowset(256, five_tuple("10.0.0.1", "203.0.113.9", 5000, 631))
    assert len(decode(decoder, ipfix(template, data))) == 1
    withdrawal = flowset(2, u16(256) + u16(0))
    decode(decoder, ipfix(withdrawal))
    assert decode(decoder, ipfix(data)) == []
    assert decoder.stats.counts["templates_withdrawn"] == 1
    assert decoder.stats.counts["flowsets_held"] == 1


def test_ipfix_variable_length_field_is_read_by_its_prefix() -> None:
    """Length 65535 reads a one-byte or three-byte length (RFC 7011 §7)."""
    template = flowset(2, template_record(256, ((4, 1), (96, 0xFFFF))))
    long_name = b"x" * 300
    data = flowset(
        256,
        b"\x11"  # protocolIdentifier
        + b"\x03"  # one-byte length
        + b"ipp"  # applicationName
        + b"\x06"  # protocolIdentifier
        + b"\xff"  # 255: a two-byte length follows
        + u16(len(long_name))
        + long_name,
    )
    records = decode(Decoder(), ipfix(template, data))
    assert records == [
        {"protocolIdentifier": 17, "applicationName": "ipp"},
        {"protocolIdentifier": 6, "applicationName": "x" * 300},
    ]


def test_enterprise_field_is_kept_with_its_number() -> None:
    """An enterprise element is read by its length and named by its number."""
    template = flowset(
        2,
        u16(256)  # template id
        + u16(2)  # field count
        + u16(4)  # protocolIdentifier
        + u16(1)
        + u16(0x8000 | 42)  # enterprise bit + element 42
        + u16(2)
        + u32(9),  # enterprise number (Cisco)
    )
    data = flowset(256, b"\x11" + b"\xbe\xef")
    records = decode(Decoder(), ipfix(template, data))
    assert records == [{"protocolIdentifier": 17, "e9.42": "beef"}]


def test_reverse_element_is_named_and_typed_like_its_forward_twin() -> None:
    """RFC 5103 reverse elements (enterprise 29305) read as reverse<Name>."""
    template = flowset(
        2,
        u16(256)  # template id
        + u16(1)  # field count
        + u16(0x8000 | 1)  # enterprise bit + octetDeltaCount
        + u16(4)  # reduced to 4 bytes
        + u32(29305),  # RFC 5103 reverse enterprise number
    )
    data = flowset(256, u32(1500))
    records = decode(Decoder(), ipfix(template, data))
    assert records == [{"reverseOctetDeltaCount": 1500}]


def test_repeated_element_keeps_both_values() -> None:
    """The same element twice in one template keeps both."""
    template = flowset(2, template_record(256, ((7, 2), (7, 2))))
    data = flowset(256, u16(1) + u16(2))
    records = decode(Decoder(), ipfix(template, data))
    assert records == [{"sourceTransportPort": 1, "sourceTransportPort#2": 2}]


def test_reduced_size_counter_is_an_integer() -> None:
    """A 3-byte octetDeltaCount (RFC 7011 §6.2) still decodes to its value."""
    template = flowset(2, template_record(256, ((1, 3),)))
    data = flowset(256, b"\x01\x00\x00")
    assert decode(Decoder(), ipfix(template, data)) == [{"octetDeltaCount": 65536}]


# Each case: an export packet, the records that must survive, and the counter
# (errors by reason) it must bump. One wire field per line.
MALFORMED = [
    pytest.param(
        v9_packet(TEMPLATE_256, DATA_256, u16(256) + u16(0) + DATA_256),
        1,
        "flowset_length",
        id="zero_length_flowset_ends_packet_keeping_records",
    ),
    pytest.param(
        v9_packet(TEMPLATE_256, DATA_256, u16(256) + u16(3) + b"\xff\xff"),
        1,
        "flowset_length",
        id="flowset_length_under_4",
    ),
    pytest.param(
        v9_packet(TEMPLATE_256, DATA_256, u16(256) + u16(999) + b"\xff" * 8),
        1,
        "flowset_length",
        id="flowset_length_past_end",
    ),
    pytest.param(
        v9_packet(TEMPLATE_256, DATA_256) + b"\x00" * 1200,
        1,
        None,
        id="zero_filled_tail_palo_alto",
    ),
    pytest.param(
        v9_packet(TEMPLATE_256, DATA_256) + b"\x00\x01",
        1,
        "trailing_bytes",
        id="nonzero_trailing_bytes",
    ),
    pytest.param(
        v9_packet(TEMPLATE_256, DATA_256, DATA_256),
        2,
        None,
        id="odd_length_flowsets_without_padding",
    ),
    pytest.param(
        v9_packet(
            TEMPLATE_256,
            flowset(256, five_tuple("10.0.0.1", "1.1.1.1", 1, 2) + b"\x00" * 30),
        ),
        1,
        None,
        id="padding_longer_than_three_bytes_nxos",
    ),
    pytest.param(
        v9_packet(flowset(0, u16(256) + u16(60000) + u16(8))),
        0,
        "template_too_many_fields",
        id="template_absurd_field_count",
    ),
    pytest.param(
        v9_packet(flowset(0, u16(256) + u16(3) + u16(8) + u16(4))),
        0,
        "template_truncated",
        id="template_field_count_past_flowset",
    ),
    pytest.param(
        v9_packet(flowset(0, template_record(256, ((8, 0), (12, 0))))),
        0,
        "template_empty_record",
        id="template_of_zero_length_fields",
    ),
    pytest.param(
        v9_packet(flowset(0, template_record(12, FIVE_TUPLE_FIELDS))),
        0,
        "template_id_reserved",
        id="template_id_under_256",
    ),
    pytest.param(
        v9_packet(flowset(1, u16(300) + u16(4) + u16(9) + b"\x00" * 13)),
        0,
        "options_template_length",
        id="v9_options_length_not_multiple_of_4",
    ),
    pytest.param(
        v9_packet(TEMPLATE_256, flowset(77, b"\x00" * 8), DATA_256),
        1,
        "reserved_set_id",
        id="reserved_flowset_id_is_skipped_by_length",
    ),
    pytest.param(b"\x00\x09\x00", 0, "truncated_header", id="v9_header_cut_short"),
    pytest.param(b"", 0, "truncated_header", id="empty_datagram"),
    pytest.param(b"\x00\x07" + b"\x00" * 30, 0, "unsupported_version", id="v7"),
    pytest.param(b"\xff" * 21, 0, "unsupported_version", id="all_ones"),
    pytest.param(
        ipfix(flowset(2, template_record(256, FIVE_TUPLE_FIELDS)))[:-5],
        0,
        "message_truncated",
        id="ipfix_message_longer_than_datagram",
    ),
    pytest.param(
        u16(10) + u16(8) + b"\x00" * 12,
        0,
        "message_length",
        id="ipfix_message_length_under_header",
    ),
    pytest.param(
        ipfix(flowset(3, u16(400) + u16(1) + u16(0) + u16(4) + u16(1))),
        0,
        "options_scope_count",
        id="ipfix_options_template_without_scope",
    ),
    pytest.param(
        ipfix(flowset(2, u16(256) + u16(0))),
        0,
        "withdraw_unknown_template",
        id="ipfix_withdrawal_of_unknown_template",
    ),
    pytest.param(
        struct.pack(">HHIIIIBBH", 5, 30, 0, 0, 0, 0, 0, 0, 0) + b"\x00" * 48,
        1,
        "v5_count_mismatch",
        id="v5_count_larger_than_datagram",
    ),
]


@pytest.mark.parametrize(("packet", "kept", "reason"), MALFORMED)
def test_malformed_packet_is_counted_and_keeps_what_decoded(
    packet: bytes, kept: int, reason: str | None
) -> None:
    """Each malformed packet keeps its good records and bumps its counter."""
    decoder = Decoder()
    records = decode(decoder, packet)
    assert len(records) == kept
    assert decoder.stats.errors["decoder_bug"] == 0
    if reason is None:
        assert not decoder.stats.errors
    else:
        assert decoder.stats.errors[reason] >= 1


def test_held_data_is_bounded_per_exporter() -> None:
    """An exporter that only sends unknown data cannot grow held state."""
    decoder = Decoder(Limits(held_flowsets_per_exporter=4))
    for set_id in range(256, 300):
        decode(decoder, v9_packet(flowset(set_id, b"\x00" * 20)))
    state = decoder.store.exporter(EXPORTER, 0)
    assert state is not None
    assert len(state.held) == 4
    assert decoder.stats.errors["held_dropped_cap"] == 40


def test_exporter_cap_drops_and_counts_new_exporters() -> None:
    """Past the exporter cap, new exporters are counted, not stored."""
    decoder = Decoder(Limits(max_exporters=2))
    for last in range(1, 5):
        decode(decoder, v9_packet(TEMPLATE_256), exporter=f"192.0.2.{last}")
    assert decoder.stats.errors["exporter_limit"] == 2


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=600), version=st.sampled_from([5, 9, 10]))
def test_random_bytes_never_escape_the_decoder(data: bytes, version: int) -> None:
    """Any bytes after a valid version number are counted, never raised."""
    decoder = Decoder()
    decode(decoder, u16(version) + data)
    assert decoder.stats.errors["decoder_bug"] == 0


@settings(max_examples=300, deadline=None)
@given(
    position=st.integers(min_value=0, max_value=200),
    value=st.integers(min_value=0, max_value=255),
)
def test_mutated_packet_never_escapes_the_decoder(position: int, value: int) -> None:
    """A valid packet with any one byte changed is decoded or counted."""
    packet = bytearray(v9_packet(TEMPLATE_256, DATA_256, DATA_256))
    packet[position % len(packet)] = value
    decoder = Decoder()
    decode(decoder, bytes(packet))
    decode(decoder, v9_packet(TEMPLATE_256, DATA_256))
    assert decoder.stats.errors["decoder_bug"] == 0


def test_ipv6_addresses_and_next_hops_decode_in_v9() -> None:
    """v9 elements 27, 28, 62 and 63 are IPv6 addresses."""
    address = bytes.fromhex("20010db8000000000000000000000001")
    template = flowset(
        0, template_record(256, ((27, 16), (28, 16), (62, 16), (63, 16)))
    )
    data = flowset(256, address * 4)
    records = decode(Decoder(), v9_packet(template, data))
    assert records == [
        {
            "sourceIPv6Address": "2001:db8::1",
            "destinationIPv6Address": "2001:db8::1",
            "ipNextHopIPv6Address": "2001:db8::1",
            "bgpNextHopIPv6Address": "2001:db8::1",
        }
    ]


def test_v9_variable_length_field_is_read_like_ipfix() -> None:
    """Some v9 exporters (H3C) send length 65535 with the IPFIX length prefix."""
    template = flowset(0, template_record(256, ((4, 1), (82, 0xFFFF))))
    data = flowset(256, b"\x06" + b"\x04" + b"eth0")
    records = decode(Decoder(), v9_packet(template, data))
    assert records == [{"protocolIdentifier": 6, "interfaceName": "eth0"}]


def test_zero_length_field_is_absent_and_neighbours_decode() -> None:
    """A field of length 0 takes no bytes and yields no value (B29, B30)."""
    template = flowset(2, template_record(256, ((150, 0), (4, 1), (151, 0))))
    data = flowset(256, b"\x11\x06")
    records = decode(Decoder(), ipfix(template, data))
    assert records == [{"protocolIdentifier": 17}, {"protocolIdentifier": 6}]


def test_oversize_and_odd_length_fields_are_kept_by_template_length() -> None:
    """A 16-byte counter is kept as bytes; a 4-byte address field of 5 bytes too."""
    template = flowset(2, template_record(256, ((1, 16), (8, 5), (2, 8))))
    data = flowset(
        256, b"\x00" * 15 + b"\x01" + b"\x0a\x00\x00\x01\x00" + b"\x00" * 7 + b"\x09"
    )
    records = decode(Decoder(), ipfix(template, data))
    assert records == [
        {
            "octetDeltaCount": "00" * 15 + "01",
            "sourceIPv4Address": "0a00000100",
            "packetDeltaCount": 9,
        }
    ]


def test_unchanged_template_resent_is_not_compiled_again() -> None:
    """A template resent with the same fields keeps its compiled layout."""
    decoder = Decoder()
    decode(decoder, v9_packet(TEMPLATE_256))
    state = decoder.store.exporter(EXPORTER, 0)
    assert state is not None
    first = state.templates[(9, 0, 256)]
    decode(decoder, v9_packet(TEMPLATE_256, DATA_256))
    assert state.templates[(9, 0, 256)] is first
    assert decoder.stats.counts["templates_learned"] == 1


def test_template_churn_is_rate_limited_per_exporter() -> None:
    """An exporter redefining a template in every packet is held to the budget."""
    decoder = Decoder(Limits(template_change_burst=5, template_changes_per_second=1))
    for length in range(1, 30):
        template = flowset(0, template_record(256, ((8, 4), (7, 1 + length % 2))))
        decoder.decode(v9_packet(template), EXPORTER, 9995, 1000.0)
    assert decoder.stats.counts["templates_learned"] == 1
    # Learning it was free; the burst of 5 pays for 5 redefinitions.
    assert decoder.stats.counts["templates_changed"] == 5
    # Of the 23 later packets, those repeating the stored template are refreshes.
    assert decoder.stats.errors["template_change_rate"] == 12


def test_template_fields_are_capped_in_total() -> None:
    """Large templates from many exporters stop at the global field budget."""
    decoder = Decoder(Limits(max_template_fields_total=2_500))
    big = tuple((8, 4) for _ in range(1_000))
    for last in range(1, 5):
        template = flowset(0, template_record(256, big))
        decoder.decode(v9_packet(template), f"192.0.2.{last}", 9995, 0.0)
    assert decoder.stats.counts["templates_learned"] == 2
    assert decoder.stats.errors["template_fields_limit"] == 2


def test_new_templates_are_not_charged_as_changes() -> None:
    """Many distinct new templates from one exporter are learned, not rate limited."""
    decoder = Decoder(Limits(template_change_burst=5, template_changes_per_second=1))
    for template_id in range(256, 456):
        template = flowset(0, template_record(template_id, ((8, 4),)))
        decoder.decode(v9_packet(template), EXPORTER, 9995, 0.0)
    assert decoder.stats.counts["templates_learned"] == 200
    assert decoder.stats.errors["template_change_rate"] == 0


def test_silent_exporter_with_templates_gives_way_at_the_cap() -> None:
    """A source that sent one template long ago cannot lock a real exporter out."""
    decoder = Decoder(Limits(max_exporters=20, held_max_age=600))
    for last in range(1, 21):
        decoder.decode(v9_packet(TEMPLATE_256), f"198.51.100.{last}", 9995, 0.0)
    out = decoder.decode(v9_packet(TEMPLATE_256, DATA_256), "192.0.2.99", 9995, 700.0)
    assert len(out.flows) == 1
    assert decoder.stats.counts["exporters_evicted"] == 1
    fresh = Decoder(Limits(max_exporters=20, held_max_age=600))
    for last in range(1, 21):
        fresh.decode(v9_packet(TEMPLATE_256), f"198.51.100.{last}", 9995, 650.0)
    fresh.decode(v9_packet(TEMPLATE_256, DATA_256), "192.0.2.99", 9995, 700.0)
    assert fresh.stats.errors["exporter_limit"] == 1


def test_exporters_holding_nothing_make_room_for_new_ones() -> None:
    """Header-only packets from spoofed sources cannot lock real exporters out."""
    decoder = Decoder(Limits(max_exporters=50))
    for last in range(1, 60):
        decoder.decode(v9_header(), f"198.51.100.{last}", 9995, 0.0)
    records = decode(decoder, v9_packet(TEMPLATE_256, DATA_256), exporter="192.0.2.99")
    assert len(records) == 1
    assert decoder.stats.errors["exporter_limit"] == 0


def test_exporter_port_joins_the_template_scope_when_asked() -> None:
    """With scope_by_port, one address's two ports keep separate templates."""
    other = flowset(0, template_record(256, ((8, 4), (12, 4))))
    decoder = Decoder(Limits(scope_by_port=True))
    decoder.decode(v9_packet(TEMPLATE_256), EXPORTER, 1000, 0.0)
    decoder.decode(v9_packet(other), EXPORTER, 2000, 0.0)
    out = decoder.decode(v9_packet(DATA_256), EXPORTER, 1000, 0.0)
    assert (
        out.flows[0].layout.values(out.flows[0].rows[0])["destinationTransportPort"]
        == 631
    )
    shared = Decoder()
    shared.decode(v9_packet(TEMPLATE_256), EXPORTER, 1000, 0.0)
    out = shared.decode(v9_packet(DATA_256), EXPORTER, 2000, 0.0)
    assert len(out.flows) == 1


def test_ipfix_withdraw_all_removes_every_data_template_of_the_domain() -> None:
    """Template id 2 with field count 0 withdraws all data templates (RFC 7011 §8.1)."""
    decoder = Decoder()
    templates = flowset(
        2,
        template_record(256, FIVE_TUPLE_FIELDS) + template_record(257, ((4, 1),)),
    )
    decode(decoder, ipfix(templates))
    decode(decoder, ipfix(flowset(2, u16(2) + u16(0))))
    state = decoder.store.exporter(EXPORTER, 0)
    assert state is not None
    assert state.templates == {}
    assert decoder.stats.counts["templates_withdrawn"] == 2


def test_held_data_expires_by_age_and_is_counted() -> None:
    """A flowset held past held_max_age is dropped and counted, never decoded."""
    decoder = Decoder(Limits(held_max_age=60))
    decoder.decode(v9_packet(DATA_256), EXPORTER, 9995, 0.0)
    decoder.store.expire(100.0)
    out = decoder.decode(v9_packet(TEMPLATE_256), EXPORTER, 9995, 100.0)
    assert out.flows == []
    assert decoder.stats.errors["held_expired"] == 1


def test_error_labels_pool_exporters_past_the_label_cap() -> None:
    """Spoofed sources past the label cap share one "other" label."""
    from collector.stats import MAX_LABELLED_EXPORTERS, Stats

    stats = Stats()
    for number in range(MAX_LABELLED_EXPORTERS + 500):
        stats.begin(f"10.{number // 65536}.{number // 256 % 256}.{number % 256}")
        stats.error(f"10.{number // 65536}.{number // 256 % 256}.{number % 256}", "x")
        stats.end()
    exporters = {exporter for exporter, _ in stats.errors_by_exporter}
    assert len(exporters) <= MAX_LABELLED_EXPORTERS + 1
    assert stats.errors["x"] == MAX_LABELLED_EXPORTERS + 500
