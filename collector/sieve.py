"""The detectors' cheap tests, run on a flowset's bytes before any record is built.

Detectors declare the protocols and destination ports they want and the source
addresses they watch (``detectors.base.Interest``). A ``Sieve`` resolves that
against one compiled layout. For a fixed-length layout it slices one byte
column out of the flowset (every record's protocol, or the low byte of every
destination port) and searches it in C; only the records that hit are
unpacked and tested in full. Most flowsets of ordinary traffic hold no record
a detector wants, and then no record is unpacked at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from collector.layout import Column, Layout, Row, convert

if TYPE_CHECKING:
    from collector.decoder import Batch

# Past this many watched addresses a flowset is tested record by record
# instead of searched once per address.
SEARCH_MEMBERS_MAX = 16


@dataclass(frozen=True, slots=True)
class Scan:
    """One byte column to search: its offset in a record and the wanted bytes."""

    offset: int
    needle: bytes
    table: bytes | None


def _scan(offset: int, values: frozenset[int]) -> Scan:
    """Build the search for byte values at one offset."""
    values = frozenset(value for value in values if 0 <= value <= 0xFF)
    if len(values) == 1:
        return Scan(offset, bytes(values), None)
    table = bytes(1 if value in values else 0 for value in range(256))
    return Scan(offset, b"\x01", table)


def _positions(column: bytes, needle: bytes) -> list[int]:
    """Return every position of a one-byte needle in a column."""
    found = []
    position = column.find(needle)
    while position >= 0:
        found.append(position)
        position = column.find(needle, position + 1)
    return found


@dataclass(frozen=True, slots=True)
class Sieve:
    """The union of every detector's interest, resolved against one layout."""

    layout: Layout
    protocol: int | None
    dst_port: int | None
    protocols: frozenset[int] | None
    dst_ports: frozenset[int] | None
    impossible: bool
    sources: tuple[int, ...]
    scan: Scan | None

    @classmethod
    def build(
        cls,
        layout: Layout,
        protocols: frozenset[int] | None,
        dst_ports: frozenset[int] | None,
    ) -> Sieve:
        """Resolve the wanted protocols and ports against a layout."""
        protocol = layout.index.get("protocolIdentifier")
        dst_port = layout.index.get("destinationTransportPort")
        impossible = (protocols is not None and protocol is None) or (
            dst_ports is not None and dst_port is None
        )
        sources = tuple(
            layout.index[name]
            for name in ("sourceIPv4Address", "sourceIPv6Address")
            if name in layout.index
        )
        return cls(
            layout,
            protocol,
            dst_port,
            protocols,
            dst_ports,
            impossible,
            sources,
            _choose_scan(layout, protocol, dst_port, protocols, dst_ports),
        )

    def matching(self, batch: Batch) -> list[int]:
        """Return the records whose protocol and destination port are wanted."""
        if self.impossible:
            return []
        if self.scan is not None and batch.body:
            scan = self.scan
            size = self.layout.record_length
            column = batch.body[scan.offset :: size]
            if scan.table is not None:
                column = column.translate(scan.table)
            if scan.needle not in column:
                return []
            positions = _positions(column, scan.needle)
            return [i for i in positions if self.wants(batch.row(i))]
        return [i for i, row in enumerate(batch.rows) if self.wants(row)]

    def wants(self, row: Row) -> bool:
        """Test one row's protocol and destination port."""
        columns = self.layout.columns
        if self.protocols is not None and self.protocol is not None:
            value = _value(columns[self.protocol], row[self.protocol])
            if value not in self.protocols:
                return False
        if self.dst_ports is not None and self.dst_port is not None:
            value = _value(columns[self.dst_port], row[self.dst_port])
            if value not in self.dst_ports:
                return False
        return True

    def watched(
        self, batch: Batch, protocols: frozenset[int], members: set[bytes]
    ) -> list[int]:
        """Return the records from a watched source address in a watched protocol."""
        if self.protocol is None or not members:
            return []
        found: set[int] = set()
        for index in self.sources:
            found.update(self._from(batch, index, members))
        if not found:
            return []
        column = self.layout.columns[self.protocol]
        return [
            i
            for i in sorted(found)
            if _value(column, batch.row(i)[self.protocol]) in protocols
        ]

    def _from(self, batch: Batch, index: int, members: set[bytes]) -> list[int]:
        """Return the records whose address in one column is a member."""
        layout = self.layout
        if not batch.body or not layout.offsets:
            return [i for i, row in enumerate(batch.rows) if row[index] in members]
        body, size = batch.body, layout.record_length
        offset = layout.offsets[index]
        width = layout.columns[index].length
        if len(members) > SEARCH_MEMBERS_MAX:
            return [
                i
                for i in range(batch.count)
                if body[i * size + offset : i * size + offset + width] in members
            ]
        found = []
        for member in members:
            if len(member) != width:
                continue
            position = body.find(member)
            while position >= 0:
                start = position - offset
                if start % size == 0:
                    found.append(start // size)
                position = body.find(member, position + 1)
        return found


def _value(column: Column, raw: object) -> object:
    """Return a raw row value as the detectors compare it."""
    return raw if column.direct else convert(column, raw)


def _choose_scan(
    layout: Layout,
    protocol: int | None,
    dst_port: int | None,
    protocols: frozenset[int] | None,
    dst_ports: frozenset[int] | None,
) -> Scan | None:
    """Pick the byte column that narrows a flowset most: port, then protocol."""
    if not layout.offsets:
        return None
    columns = layout.columns
    if dst_ports is not None and dst_port is not None and _plain(columns[dst_port], 2):
        low = frozenset(value & 0xFF for value in dst_ports)
        return _scan(layout.offsets[dst_port] + 1, low)
    if protocols is not None and protocol is not None and _plain(columns[protocol], 1):
        return _scan(layout.offsets[protocol], protocols)
    return None


def _plain(column: Column, length: int) -> bool:
    """Return True when a column is an integer of this many bytes."""
    return column.length == length and column.direct
