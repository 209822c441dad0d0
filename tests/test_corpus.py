"""Replaying every public capture group through one decoder: robustness and counts.

Each replay group of ``../shared/captures/manifest.json`` is fed, file by file and
datagram by datagram, into one ``Decoder``: pcap and pcapng files through
``read_capture``, any other file as one raw export packet.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from collector.decoder import Decoded, Decoder
from collector.records import build_flow
from tests.conftest import require_corpus
from tests.corpus import GROUPS, datagrams, manifest

pytestmark = pytest.mark.corpus

# RFC 7011 §3.3.2 / RFC 3954 §5.3: a flowset length is 16 bits and includes its
# 4-byte header, so no flowset body is longer than this.
MAX_FLOWSET_BODY = 0xFFFF - 4

# The counters the per-file table shows beside the errors.
TABLE_COUNTS = ("export_packets", "flow_records", "options_records", "flowsets_held")


@dataclass(slots=True)
class Call:
    """One decode call: its input size, its output and the counters after it."""

    file: str
    size: int
    out: Decoded
    counts: Counter[str]
    errors: Counter[str]


@dataclass(slots=True)
class Replay:
    """A replay group fed through one decoder, call by call."""

    decoder: Decoder
    calls: list[Call] = field(default_factory=list)


def replay(group: str) -> Replay:
    """Feed a replay group's files in order into one decoder, recording each call."""
    corpus = require_corpus()
    result = Replay(Decoder())
    for name in manifest()["replay_groups"][group]["files"]:
        for exporter, port, received, data in datagrams(corpus / name):
            out = result.decoder.decode(data, exporter, port, received)
            stats = result.decoder.stats
            result.calls.append(
                Call(name, len(data), out, stats.counts.copy(), stats.errors.copy())
            )
    return result


@pytest.mark.parametrize("group", GROUPS)
def test_replaying_group_raises_nothing_and_counts_no_decoder_bug(group: str) -> None:
    """Every group decodes without an exception and without a decoder_bug count."""
    result = replay(group)

    assert result.calls, f"{group}: no export packet was read"
    assert result.decoder.stats.errors["decoder_bug"] == 0


@pytest.mark.parametrize("group", GROUPS)
def test_every_flow_row_of_group_builds_a_flow_record(group: str) -> None:
    """Every decoded flow row becomes a FlowRecord without raising."""
    result = replay(group)

    built = 0
    for call in result.calls:
        for batch in call.out.flows:
            for row in batch.rows:
                record = build_flow(batch.layout, row, batch.context)
                assert record.version == batch.context.version
                built += 1

    assert built == result.decoder.stats.counts["flow_records"]


@pytest.mark.parametrize("group", GROUPS)
def test_decoding_work_is_bounded_by_bytes_received(group: str) -> None:
    """Rows and flowsets per call never outgrow the bytes the decoder was given."""
    result = replay(group)

    received = 0
    emitted = 0
    flowsets_before = 0
    for call in result.calls:
        received += call.size
        flowsets = call.counts["flowsets"]
        # Every flowset walked takes at least its 4-byte header of this datagram.
        assert flowsets - flowsets_before <= call.size // 4
        flowsets_before = flowsets

        for batch in call.out.flows + call.out.options:
            # A record takes at least one byte (zero-length templates are refused),
            # so one flowset body bounds the rows it yields.
            assert batch.layout.record_length >= 1
            assert len(batch.rows) * batch.layout.record_length <= MAX_FLOWSET_BODY
            emitted += len(batch.rows)

        # Held data decodes later, but never into more rows than bytes received.
        assert emitted <= received


# Outcomes checked by reading the bytes of each file (offsets in the comments).
EXPECTED_COUNTS = [
    pytest.param(
        "logstash: Netflow 9 Palo Alto 1 flowset in large zero filled packet",
        # Data flowset 257 is 160 bytes, body 156; template 257 is 20 fields,
        # 155 bytes: one record and a pad byte, then 1,220 zero bytes of fill.
        {"flow_records": 1},
        {},
        id="paloalto-zero-filled-tail-ignored",
    ),
    pytest.param(
        "python-netflow: v9 data before template in same packet",
        # Flowset 1024 (324 bytes, body 320) comes before template 1024 (14
        # fields, 40 bytes) in the same datagram: 8 records once it is learned.
        {"flow_records": 8, "flowsets_held": 1, "held_decoded": 1},
        {},
        id="v9-data-before-template-all-decoded",
    ),
    pytest.param(
        "logstash: Netflow 5 invalid 01 (count 55582)",
        # 1,464 bytes = 24-byte header + 30 records of 48; header count 55,582.
        {"flow_records": 30},
        {"v5_count_mismatch": 1},
        id="v5-huge-count-keeps-records-that-fit",
    ),
    pytest.param(
        "logstash: Netflow 5 invalid 02 (count 163)",
        # Same size as invalid 01, header count 163.
        {"flow_records": 30},
        {"v5_count_mismatch": 1},
        id="v5-large-count-keeps-records-that-fit",
    ),
    pytest.param(
        "logstash: Netflow 5 generic",
        # The file is 12 v5 packets back to back (30 records), as a capture tool
        # wrote them: each header's count is right, so all are decoded.
        {"flow_records": 30, "chained_messages": 11},
        {},
        id="v5-packets-back-to-back-all-decoded",
    ),
    pytest.param(
        "telegraf: issue_14370",
        # The IPFIX header says 290 bytes, the datagram and its last set run to
        # 292: the set fits the datagram, so its record is kept and counted.
        {"flow_records": 2},
        {"message_length_short": 1},
        id="ipfix-understated-message-length-keeps-last-set",
    ),
    pytest.param(
        "logstash: IPFIX Netscaler with variable length fields, missing templates",
        # Four data sets (258, 257, 280, 258) and no template at all.
        {"flow_records": 0, "flowsets_held": 4},
        {},
        id="netscaler-data-alone-is-held",
    ),
    pytest.param(
        "logstash: IPFIX Netscaler with variable length fields",
        # Templates 256-262 arrive first; sets 258, 257, 258 hold one
        # variable-length record each, set 280 has no template.
        {"flow_records": 3, "flowsets_held": 1},
        {},
        id="netscaler-variable-length-records",
    ),
    pytest.param(
        "python-netflow: v9 infinite-loop reproducer (issue #36)",
        # Five 72-byte flowsets for unknown template 260 at offsets 20..308,
        # then 620 zero bytes: all held, the zero tail ends the walk.
        {"flow_records": 0, "flowsets_held": 5},
        {},
        id="v9-unknown-template-zero-tail-terminates",
    ),
    pytest.param(
        "logstash: Netflow 9 invalid 01",
        # Header count 2, but six flowsets: templates 1024 (39 bytes) and 2048
        # (63), options template 256 (12 bytes), one record in each data flowset.
        {"flow_records": 2, "options_records": 1},
        {},
        id="v9-header-count-not-trusted",
    ),
    pytest.param(
        "logstash: IPFIX",
        # Three IPFIX messages back to back (484 + 64 + 240 bytes): 6 + 1 + 5
        # records of template 1024 and one options record of template 256.
        {"flow_records": 12, "options_records": 1, "chained_messages": 2},
        {},
        id="ipfix-chained-messages",
    ),
    pytest.param(
        "logstash: Netflow 9 ipt_netflow reduced size encoding",
        # Template 260 (61 bytes) defines 5+1+3+1+2 records; the five 259 and
        # one 262 flowsets have no template in the file.
        {"flow_records": 12, "flowsets_held": 6},
        {},
        id="v9-unknown-flowsets-held-known-decoded",
    ),
    pytest.param(
        "python-netflow: v1",
        {"flow_records": 0},
        {"unsupported_version": 1},
        id="v1-is-unsupported",
    ),
    pytest.param(
        "python-netflow: invalid 21 bytes of 0xFF",
        {"flow_records": 0},
        {"unsupported_version": 1},
        id="garbage-is-unsupported-version",
    ),
]


@pytest.mark.parametrize(("group", "counts", "errors"), EXPECTED_COUNTS)
def test_well_understood_group_decodes_to_expected_counts(
    group: str, counts: dict[str, int], errors: dict[str, int]
) -> None:
    """A group whose bytes were read by hand yields exactly the expected counters."""
    result = replay(group)
    stats = result.decoder.stats

    assert {name: stats.counts[name] for name in counts} == counts
    assert dict(stats.errors) == errors


def _dotted(raw: bytes) -> str:
    """Write four address bytes as dotted text."""
    return ".".join(str(byte) for byte in raw)


def test_palo_alto_record_values_match_its_bytes() -> None:
    """The one Palo Alto record in a zero-filled datagram reads its own bytes."""
    result = replay(
        "logstash: Netflow 9 Palo Alto 1 flowset in large zero filled packet"
    )
    data = (
        require_corpus()
        / "logstash-codec-netflow/spec/codecs"
        / "netflow9_test_paloalto_81_data257_1flowset_in_large_zerofilled_packet.dat"
    ).read_bytes()
    body = data[24:]  # 20-byte v9 header, 4-byte flowset header

    (values,) = [
        batch.layout.values(row)
        for call in result.calls
        for batch in call.out.flows
        for row in batch.rows
    ]

    assert values["octetDeltaCount"] == int.from_bytes(body[0:8], "big") == 363
    assert values["packetDeltaCount"] == int.from_bytes(body[8:12], "big") == 3
    assert values["protocolIdentifier"] == body[12] == 6
    assert values["sourceTransportPort"] == int.from_bytes(body[15:17], "big")
    assert values["sourceIPv4Address"] == _dotted(body[17:21]) == "134.220.2.6"
    assert values["destinationIPv4Address"] == _dotted(body[27:31]) == "134.220.1.156"
    assert values["PANOS_APPID"] == "kerberos"  # body[59:91], NUL padded


def test_v9_data_before_template_rows_read_their_own_bytes() -> None:
    """Records held for a later template in the same datagram keep their addresses."""
    result = replay("python-netflow: v9 data before template in same packet")
    data = (
        require_corpus()
        / "python-netflow-v9-softflowd/tests/lib.py.extracted"
        / "PACKET_V9_TEMPLATE_MIXED.bin"
    ).read_bytes()
    # Flowset 1024 body starts at byte 24; records are 40 bytes, src then dst.
    expected = [
        struct.unpack_from(">4s4s", data, 24 + 40 * index) for index in range(8)
    ]

    got = [
        (values["sourceIPv4Address"], values["destinationIPv4Address"])
        for call in result.calls
        for batch in call.out.flows
        for values in map(batch.layout.values, batch.rows)
    ]

    assert got == [(_dotted(src), _dotted(dst)) for src, dst in expected]


@pytest.fixture(scope="session")
def corpus_table(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """Collect the per-file replay table and write it once the session ends."""
    lines: list[str] = []
    yield lines
    if not lines:
        return
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        print("\n".join(lines))
        return
    reporter.write_sep("=", "corpus replay, per file")
    for line in lines:
        reporter.write_line(line)


def _table_row(group: str, name: str, before: Call | None, after: Call) -> str:
    """Format one file's counter deltas and errors as a table line."""
    counts = after.counts.copy()
    errors = after.errors.copy()
    if before is not None:
        counts.subtract(before.counts)
        errors.subtract(before.errors)
    reasons = ",".join(f"{reason}={n}" for reason, n in sorted(errors.items()) if n)
    numbers = " ".join(f"{counts[counter]:>6}" for counter in TABLE_COUNTS)
    return f"{group[:44]:<44} {Path(name).name[:48]:<48} {numbers} {reasons or '-'}"


def test_corpus_table_covers_every_file(corpus_table: list[str]) -> None:
    """Every file of every group yields at least one export packet in the table."""
    require_corpus()
    header = f"{'group':<44} {'file':<48} " + " ".join(
        f"{title:>6}" for title in ("pkts", "flows", "opts", "held")
    )
    corpus_table.append(header + " errors")

    for group in GROUPS:
        result = replay(group)
        previous: Call | None = None
        for name in manifest()["replay_groups"][group]["files"]:
            calls = [call for call in result.calls if call.file == name]
            assert calls, f"{group}: {name} yielded no export packet"
            corpus_table.append(_table_row(group, name, previous, calls[-1]))
            previous = calls[-1]
