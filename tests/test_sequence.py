"""Sequence numbers: loss, reordering and restarts per exporter and domain."""

from __future__ import annotations

import struct

from collector.decoder import Decoder
from collector.sequence import SequenceTracker
from tests.packets import FIVE_TUPLE_FIELDS, five_tuple, flowset, template_record

EXPORTER = "192.0.2.1"


def v9(sequence: int, source_id: int = 0) -> bytes:
    """An empty v9 export packet with a given sequence number."""
    return struct.pack(">HHIIII", 9, 0, 1000, 1_768_471_200, sequence, source_id)


def test_v9_counts_missing_export_packets() -> None:
    """v9 numbers export packets: 1, 2, then 5 means two were lost."""
    decoder = Decoder()
    for sequence in (1, 2, 5):
        decoder.decode(v9(sequence), EXPORTER, 1, 0.0)
    assert decoder.stats.counts["sequence_lost"] == 2
    assert decoder.sequences.lost[EXPORTER] == 2


def test_interleaved_domains_are_separate_streams() -> None:
    """Two v9 source ids with their own counters are not loss or resets (B05)."""
    decoder = Decoder()
    for sequence in range(1, 6):
        decoder.decode(v9(sequence, source_id=1), EXPORTER, 1, 0.0)
        decoder.decode(v9(sequence + 500, source_id=2), EXPORTER, 1, 0.0)
    assert decoder.stats.counts["sequence_lost"] == 0
    assert decoder.sequences.resets[EXPORTER] == 0


def test_v5_numbers_flow_records() -> None:
    """v5 numbers flows: a packet of 2 records moves the expectation by 2."""
    record = b"\x00" * 48

    def v5(sequence: int, count: int) -> bytes:
        header = struct.pack(">HHIIIIBBH", 5, count, 0, 0, 0, sequence, 0, 0, 0)
        return header + record * count

    decoder = Decoder()
    decoder.decode(v5(100, 2), EXPORTER, 1, 0.0)
    decoder.decode(v5(102, 3), EXPORTER, 1, 0.0)
    assert decoder.stats.counts["sequence_lost"] == 0
    decoder.decode(v5(110, 1), EXPORTER, 1, 0.0)
    assert decoder.stats.counts["sequence_lost"] == 5


def test_ipfix_numbers_data_records() -> None:
    """IPFIX numbers data records; a message with held data re-synchronises."""

    def ipfix(sequence: int, *sets: bytes) -> bytes:
        body = b"".join(sets)
        header = struct.pack(">HHIII", 10, 16 + len(body), 1_768_471_200, sequence, 0)
        return header + body

    template = flowset(2, template_record(256, FIVE_TUPLE_FIELDS))
    two = flowset(256, five_tuple("10.0.0.1", "1.1.1.1", 1, 2) * 2)
    decoder = Decoder()
    decoder.decode(ipfix(0, flowset(300, b"\x00" * 21)), EXPORTER, 1, 0.0)
    decoder.decode(ipfix(7, template, two), EXPORTER, 1, 0.0)
    decoder.decode(ipfix(9, two), EXPORTER, 1, 0.0)
    assert decoder.stats.counts["sequence_lost"] == 0
    decoder.decode(ipfix(20, two), EXPORTER, 1, 0.0)
    assert decoder.stats.counts["sequence_lost"] == 9


def test_small_step_back_is_reordering_not_loss_or_reset() -> None:
    """Swapped packets count as reordered (B06)."""
    tracker = SequenceTracker()
    for sequence in (1, 2, 4, 3, 5):
        tracker.observe(EXPORTER, 9, 0, sequence, 1)
    assert tracker.reordered[EXPORTER] == 1
    assert tracker.resets[EXPORTER] == 0


def test_large_jump_is_a_restart_not_loss() -> None:
    """An exporter restart starts its numbers again: counted as a reset."""
    tracker = SequenceTracker()
    tracker.observe(EXPORTER, 9, 0, 5_000_000, 1)
    tracker.observe(EXPORTER, 9, 0, 1, 1)
    tracker.observe(EXPORTER, 9, 0, 2, 1)
    assert tracker.resets[EXPORTER] == 1
    assert tracker.lost[EXPORTER] == 0


def test_sequence_wraps_at_32_bits() -> None:
    """The counter wrapping past 2**32 - 1 to 0 is not loss."""
    tracker = SequenceTracker()
    tracker.observe(EXPORTER, 9, 0, 2**32 - 1, 1)
    assert tracker.observe(EXPORTER, 9, 0, 0, 1) == 0
