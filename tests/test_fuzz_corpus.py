"""Mutating real export packets: the decoder survives them, and its work stays bounded.

Export packets of every replay group in ``../shared/captures`` and of every exporter
fixture are loaded once. Hypothesis picks one, mutates it (flipped or replaced
bytes, truncation, a duplicated flowset, rewritten length fields, two packets
spliced), and feeds its source's template packets, then the mutated packet, into a
fresh ``Decoder``. Nothing may escape, ``decoder_bug`` stays 0, every call returns
(the deadline catches hangs), and no call yields more rows than bytes it was given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.capture import read_capture
from collector.decoder import Decoded, Decoder
from collector.records import build_flow
from tests.conftest import CAPTURES, EXPORTS, require_corpus

pytestmark = pytest.mark.corpus

RAW_EXPORTER = "192.0.2.1"
RAW_PORT = 9995
CAPTURE_SUFFIXES = (".pcap", ".pcapng")
V9_HEADER_LENGTH = 20
IPFIX_HEADER_LENGTH = 16
# Flowset ids that carry templates: v9 template / options template, then IPFIX's.
TEMPLATE_SETS = {9: (0, 1), 10: (2, 3)}

# Per source: its first template packets, and a few distinct packets to mutate.
MAX_TEMPLATE_PACKETS = 8
MAX_PACKETS_PER_SOURCE = 12

# Generous: a decode call takes milliseconds; only a hang comes near this.
FUZZ = settings(
    max_examples=200,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow],
)

# 16-bit values that break length arithmetic: empty, below a header, odd, huge.
EDGE_LENGTHS = (0, 1, 2, 3, 4, 5, 7, 8, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)


@dataclass(frozen=True, slots=True)
class Packet:
    """One export packet and the exporter that sent it."""

    exporter: str
    port: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Source:
    """A replay group's (or fixture's) template packets and packets to mutate."""

    name: str
    templates: tuple[Packet, ...]
    packets: tuple[Packet, ...]


# --- Walking the wire format, to find flowsets and length fields -------------------


def _u16(data: bytes, offset: int) -> int:
    """Read a big-endian 16-bit number."""
    return int.from_bytes(data[offset : offset + 2], "big")


def flowsets(data: bytes) -> list[tuple[int, int, int]]:
    """Return (offset, set id, length) of each flowset a v9/IPFIX packet declares."""
    if len(data) < 4 or _u16(data, 0) not in TEMPLATE_SETS:
        return []
    ipfix = _u16(data, 0) == 10
    offset = IPFIX_HEADER_LENGTH if ipfix else V9_HEADER_LENGTH
    end = min(_u16(data, 2), len(data)) if ipfix else len(data)
    found = []
    while end - offset >= 4:
        set_id, length = _u16(data, offset), _u16(data, offset + 2)
        if length < 4:
            break
        found.append((offset, set_id, length))
        offset += length
    return found


def carries_templates(data: bytes) -> bool:
    """Whether a packet holds a template or options template flowset."""
    version = _u16(data, 0) if len(data) >= 2 else 0
    ids = TEMPLATE_SETS.get(version, ())
    return any(set_id in ids for _, set_id, _ in flowsets(data))


def length_offsets(data: bytes) -> list[int]:
    """Return where the 16-bit count and length fields of a packet sit.

    The header count or message length, each flowset length, and in template
    flowsets each template's field count and every field's length.
    """
    offsets = [2] if len(data) >= 4 else []
    version = _u16(data, 0) if len(data) >= 2 else 0
    for offset, set_id, length in flowsets(data):
        offsets.append(offset + 2)
        if set_id in TEMPLATE_SETS.get(version, ())[:1]:
            # A plain template record: id, field count, then (id, length) pairs.
            end = min(offset + length, len(data))
            offsets.append(offset + 6)
            offsets.extend(range(offset + 10, end - 1, 4))
    return [offset for offset in offsets if offset + 2 <= len(data)]


# --- Loading the corpus once --------------------------------------------------------


def _file_packets(path: Path) -> list[Packet]:
    """Read a capture's datagrams, or a raw file as one export packet."""
    if path.suffix in CAPTURE_SUFFIXES:
        return [Packet(d.exporter, d.port, d.data) for d in read_capture(path)]
    return [Packet(RAW_EXPORTER, RAW_PORT, path.read_bytes())]


def _source(name: str, paths: list[Path]) -> Source | None:
    """Gather a source's template packets and distinct packets to mutate."""
    packets = [packet for path in paths for packet in _file_packets(path)]
    templates = [packet for packet in packets if carries_templates(packet.data)]
    distinct = list({packet.data: packet for packet in packets if packet.data}.values())
    if not distinct:
        return None
    return Source(
        name,
        tuple(templates[:MAX_TEMPLATE_PACKETS]),
        tuple(distinct[:MAX_PACKETS_PER_SOURCE]),
    )


def _load() -> list[Source]:
    """Load every replay group present and every exporter fixture."""
    groups: list[tuple[str, list[Path]]] = [
        (f"fixture: {path.name}", [path]) for path in sorted(EXPORTS.glob("*.pcap"))
    ]
    manifest = CAPTURES / "manifest.json"
    if manifest.is_file():
        replay = json.loads(manifest.read_text())["replay_groups"]
        groups += [
            (name, [CAPTURES / file for file in group["files"]])
            for name, group in replay.items()
        ]
    sources = [_source(name, paths) for name, paths in groups]
    return [source for source in sources if source is not None]


SOURCES = _load()
PACKETS = [packet for source in SOURCES for packet in source.packets]


# --- Mutations ---------------------------------------------------------------------


@st.composite
def picked(draw: st.DrawFn) -> tuple[Source, Packet]:
    """Pick a source, then one of its packets: every vendor gets a fair chance."""
    source = draw(st.sampled_from(SOURCES))
    return source, draw(st.sampled_from(source.packets))


@st.composite
def flipped(draw: st.DrawFn, data: bytes) -> bytes:
    """Flip bits in up to eight bytes at random offsets."""
    mutated = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        offset = draw(st.integers(0, len(mutated) - 1))
        mutated[offset] ^= draw(st.integers(1, 255))
    return bytes(mutated)


@st.composite
def replaced(draw: st.DrawFn, data: bytes) -> bytes:
    """Overwrite a run of up to 16 bytes with drawn bytes (often zeros or 0xFF)."""
    offset = draw(st.integers(0, len(data) - 1))
    run = draw(
        st.one_of(
            st.binary(min_size=1, max_size=16),
            st.sampled_from((b"\x00", b"\xff")).map(lambda byte: byte * 16),
        )
    )
    run = run[: len(data) - offset]
    return data[:offset] + run + data[offset + len(run) :]


@st.composite
def truncated(draw: st.DrawFn, data: bytes) -> bytes:
    """Cut the packet short anywhere, header included."""
    return data[: draw(st.integers(0, len(data) - 1))]


@st.composite
def relengthed(draw: st.DrawFn, data: bytes) -> bytes:
    """Rewrite a count or length field: header, flowset, template or field."""
    offsets = length_offsets(data)
    if not offsets:
        return draw(flipped(data))
    offset = draw(st.sampled_from(offsets))
    current = _u16(data, offset)
    value = draw(
        st.one_of(
            st.sampled_from(EDGE_LENGTHS),
            st.integers(-8, 8).map(lambda delta: (current + delta) % 0x10000),
            st.integers(0, 0xFFFF),
        )
    )
    return data[:offset] + value.to_bytes(2, "big") + data[offset + 2 :]


@st.composite
def duplicated(draw: st.DrawFn, data: bytes) -> bytes:
    """Repeat one flowset in place, keeping or fixing the IPFIX message length."""
    sets = [(offset, length) for offset, _, length in flowsets(data)]
    if not sets:
        return draw(flipped(data))
    offset, length = draw(st.sampled_from(sets))
    copy = data[offset : offset + length]
    mutated = data[: offset + length] + copy + data[offset + length :]
    if _u16(data, 0) == 10 and draw(st.booleans()):
        message = (_u16(data, 2) + len(copy)) % 0x10000
        mutated = mutated[:2] + message.to_bytes(2, "big") + mutated[4:]
    return mutated


@st.composite
def spliced(draw: st.DrawFn, data: bytes) -> bytes:
    """Join the head of this packet to the tail of another one."""
    other = draw(st.sampled_from(PACKETS)).data
    head = draw(st.integers(0, len(data)))
    tail = draw(st.integers(0, len(other)))
    return data[:head] + other[tail:]


MUTATIONS = (flipped, replaced, truncated, relengthed, duplicated, spliced)


# --- Feeding and checking ----------------------------------------------------------


def _rows(out: Decoded) -> int:
    """Count the rows of one decode call, flows and options alike."""
    return sum(len(batch.rows) for batch in out.flows + out.options)


def _check_bounded(out: Decoded, largest: int) -> None:
    """Every batch walks records of at least one byte, within one packet's bytes."""
    for batch in out.flows + out.options:
        assert batch.layout.record_length >= 1
        assert len(batch.rows) * batch.layout.record_length <= largest
        for row in batch.rows:
            batch.layout.values(row)


def feed(source: Source, packet: Packet, mutated: bytes) -> tuple[Decoder, Decoded]:
    """Feed a fresh decoder the source's templates, then the mutated packet."""
    decoder = Decoder()
    fed = 0
    largest = len(mutated)
    for template in source.templates:
        out = decoder.decode(template.data, template.exporter, template.port, 0.0)
        fed += len(template.data)
        largest = max(largest, len(template.data))
        _check_bounded(out, largest)

    out = decoder.decode(mutated, packet.exporter, packet.port, 1.0)

    assert decoder.stats.errors["decoder_bug"] == 0
    _check_bounded(out, largest)
    # No zero-length-record loop: never more rows than bytes, held data included.
    assert _rows(out) <= len(mutated) + fed
    assert decoder.stats.counts["flow_records"] <= len(mutated) + fed
    return decoder, out


def test_fuzz_corpus_holds_packets_of_every_version() -> None:
    """The loaded corpus has v5, v9 and IPFIX packets and template packets to feed."""
    require_corpus()

    versions = {_u16(packet.data, 0) for packet in PACKETS if len(packet.data) >= 2}

    assert {5, 9, 10} <= versions
    assert sum(1 for source in SOURCES if source.templates) >= 50


def test_unmutated_packets_decode_without_decoder_bug() -> None:
    """Every loaded packet, fed after its source's templates, decodes cleanly."""
    for source in SOURCES:
        for packet in source.packets:
            feed(source, packet, packet.data)


@FUZZ
@given(st.data())
def test_flipped_bytes_never_escape_or_loop(data: st.DataObject) -> None:
    """Bit flips anywhere in a real packet are counted, never raised or looped on."""
    source, packet = data.draw(picked())
    mutated = data.draw(flipped(packet.data))

    feed(source, packet, mutated)


@FUZZ
@given(st.data())
def test_replaced_or_truncated_bytes_never_escape_or_loop(
    data: st.DataObject,
) -> None:
    """Overwritten runs and cut-off packets are counted, never raised or looped on."""
    source, packet = data.draw(picked())
    mutation = data.draw(st.sampled_from((replaced, truncated)))
    mutated = data.draw(mutation(packet.data))

    feed(source, packet, mutated)


@FUZZ
@given(st.data())
def test_rewritten_length_fields_never_escape_or_loop(data: st.DataObject) -> None:
    """Bad counts and lengths (0, 1, odd, 0xFFFF, off by a few) stay bounded."""
    source, packet = data.draw(picked())
    mutated = data.draw(relengthed(packet.data))

    feed(source, packet, mutated)


@FUZZ
@given(st.data())
def test_duplicated_or_spliced_flowsets_never_escape_or_loop(
    data: st.DataObject,
) -> None:
    """A repeated flowset or two packets joined mid-way decode within bounds."""
    source, packet = data.draw(picked())
    mutation = data.draw(st.sampled_from((duplicated, spliced)))
    mutated = data.draw(mutation(packet.data))

    feed(source, packet, mutated)


@FUZZ
@given(st.data())
def test_stacked_mutations_build_flow_records(data: st.DataObject) -> None:
    """After up to three mutations in a row, every decoded row builds a record."""
    source, packet = data.draw(picked())
    mutated = packet.data
    for _ in range(data.draw(st.integers(1, 3))):
        if not mutated:
            break
        mutation = data.draw(st.sampled_from(MUTATIONS))
        mutated = data.draw(mutation(mutated))

    _, out = feed(source, packet, mutated)

    for batch in out.flows:
        for row in batch.rows:
            build_flow(batch.layout, row, batch.context)
