"""Templates compiled once into a record layout that splits a flowset in one pass.

A fixed-length template becomes a ``struct.Struct``; a whole data flowset is then
split with ``iter_unpack`` into row tuples. Elements of a registry-standard integer
width come out as ints, everything else as bytes that ``values`` converts only when
a full flow record is wanted. Templates with variable-length elements (RFC 7011
§7) take a slower per-record path that yields rows of the same shape.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from collector.ie import Kind, lookup

VARIABLE_LENGTH = 0xFFFF

Row = tuple[Any, ...]

_INT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}
_FLOAT_CODES = {4: "f", 8: "d"}


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of a template as the exporter declared it."""

    element_id: int
    length: int
    enterprise: int = 0


@dataclass(frozen=True, slots=True)
class Column:
    """Where one non-empty field sits in a row, and how to read it."""

    name: str
    kind: Kind
    length: int
    direct: bool


def _struct_code(kind: Kind, length: int) -> tuple[str, bool]:
    """Return the struct code for a field and whether it decodes to its value."""
    if kind is Kind.UNSIGNED and length in _INT_CODES:
        return _INT_CODES[length], True
    if kind is Kind.SIGNED and length in _INT_CODES:
        return _INT_CODES[length].lower(), True
    if kind is Kind.FLOAT and length in _FLOAT_CODES:
        return _FLOAT_CODES[length], True
    return f"{length}s", False


def _unique_names(fields: tuple[FieldSpec, ...]) -> list[str]:
    """Name each field, suffixing repeats so that no element overwrites another.

    A zero-length field takes no place in a record and no name: an element
    sent empty and then with a value is named as if sent once.
    """
    seen: dict[str, int] = {}
    names = []
    for spec in fields:
        base = lookup(spec.element_id, spec.enterprise).name
        if spec.length == 0:
            names.append(base)
            continue
        count = seen.get(base, 0) + 1
        seen[base] = count
        names.append(base if count == 1 else f"{base}#{count}")
    return names


@dataclass(slots=True)
class Layout:
    """A compiled template: row splitting plus the indexes of well-known fields."""

    template_id: int
    fields: tuple[FieldSpec, ...]
    options: bool = False
    scope_count: int = 0
    columns: tuple[Column, ...] = ()
    record_length: int = 0
    variable: bool = False
    codec: struct.Struct | None = None
    index: dict[str, int] = field(default_factory=dict)
    # Byte offset of each column within a record (fixed-length layouts only).
    offsets: tuple[int, ...] = ()
    # Each column's name, and the columns whose raw value needs converting.
    names: tuple[str, ...] = ()
    converted: tuple[tuple[int, Column], ...] = ()
    # Scratch space for consumers (the pipeline's sieve, the flow-record
    # plan), built once per layout and dropped with it when the template
    # changes.
    cache: dict[object, Any] = field(default_factory=dict)

    @classmethod
    def compile(
        cls,
        template_id: int,
        fields: tuple[FieldSpec, ...],
        *,
        options: bool = False,
        scope_count: int = 0,
    ) -> Layout:
        """Compile a template; zero-length fields take no place in the row."""
        columns: list[Column] = []
        codes: list[str] = []
        offsets: list[int] = []
        index: dict[str, int] = {}
        variable = False
        record_length = 0

        for spec, name in zip(fields, _unique_names(fields), strict=True):
            kind = lookup(spec.element_id, spec.enterprise).kind
            if spec.length == VARIABLE_LENGTH:
                variable = True
                # RFC 7011 §7: at least the one-byte length prefix is present.
                record_length += 1
                columns.append(Column(name, kind, VARIABLE_LENGTH, False))
                index.setdefault(name, len(columns) - 1)
                continue
            if spec.length == 0:
                continue
            code, direct = _struct_code(kind, spec.length)
            codes.append(code)
            offsets.append(record_length)
            record_length += spec.length
            columns.append(Column(name, kind, spec.length, direct))
            index.setdefault(name, len(columns) - 1)

        codec = None if variable else struct.Struct(">" + "".join(codes))
        return cls(
            template_id=template_id,
            fields=fields,
            options=options,
            scope_count=scope_count,
            columns=tuple(columns),
            record_length=record_length,
            variable=variable,
            codec=codec,
            index=index,
            offsets=() if variable else tuple(offsets),
            names=tuple(column.name for column in columns),
            converted=tuple(
                (position, column)
                for position, column in enumerate(columns)
                if not column.direct
            ),
        )

    def rows(self, body: bytes) -> tuple[list[Row], int]:
        """Split a data flowset body into rows; return them and the bytes left over.

        A remainder shorter than one record is padding (RFC 7011 §3.3.1); the
        exporter may pad with any amount, so it is not an error.
        """
        if self.codec is not None:
            count = len(body) // self.record_length
            used = count * self.record_length
            return list(self.codec.iter_unpack(body[:used])), len(body) - used
        return self._variable_rows(body)

    def _variable_rows(self, body: bytes) -> tuple[list[Row], int]:
        """Decode records one by one when some field carries its own length."""
        rows: list[Row] = []
        offset = 0
        end = len(body)
        while end - offset >= self.record_length:
            row, next_offset = self._one_variable_row(body, offset)
            if row is None:
                break
            rows.append(row)
            offset = next_offset
        return rows, end - offset

    def _one_variable_row(self, body: bytes, offset: int) -> tuple[Row | None, int]:
        """Read one record starting at offset, or None when it does not fit."""
        values: list[Any] = []
        end = len(body)
        for column in self.columns:
            length = column.length
            if length == VARIABLE_LENGTH:
                if offset >= end:
                    return None, offset
                length = body[offset]
                offset += 1
                if length == 255:
                    # RFC 7011 §7: 255 means a two-byte length follows.
                    if offset + 2 > end:
                        return None, offset
                    length = int.from_bytes(body[offset : offset + 2], "big")
                    offset += 2
            if offset + length > end:
                return None, offset
            raw = body[offset : offset + length]
            offset += length
            if column.direct:
                code, _ = _struct_code(column.kind, column.length)
                values.append(struct.unpack(">" + code, raw)[0])
            else:
                values.append(raw)
        return tuple(values), offset

    def values(self, row: Row) -> dict[str, Any]:
        """Return every field of a row by element name, as JSON-friendly values."""
        values = dict(zip(self.names, row, strict=True))
        for position, column in self.converted:
            values[column.name] = convert(column, row[position])
        return values


@lru_cache(maxsize=65_536)
def _ipv4_text(packed: bytes) -> str:
    """Format a packed IPv4 address (cached: flows repeat addresses)."""
    return str(ipaddress.IPv4Address(packed))


@lru_cache(maxsize=65_536)
def _ipv6_text(packed: bytes) -> str:
    """Format a packed IPv6 address (cached: flows repeat addresses)."""
    return str(ipaddress.IPv6Address(packed))


def convert(column: Column, value: Any) -> Any:
    """Turn one raw field value into an int, float or string."""
    if column.direct or not isinstance(value, bytes):
        return value
    kind = column.kind
    size = len(value)
    if kind in (Kind.UNSIGNED, Kind.SIGNED) and 0 < size <= 8:
        # RFC 7011 §6.2 reduced-size encoding: the value keeps its meaning.
        return int.from_bytes(value, "big", signed=kind is Kind.SIGNED)
    if kind is Kind.IPV4 and size == 4:
        return _ipv4_text(value)
    if kind is Kind.IPV6 and size == 16:
        return _ipv6_text(value)
    if kind is Kind.MAC and size == 6:
        return value.hex(":")
    if kind is Kind.STRING:
        # Exporters written in C end strings with NUL and pad after it.
        return value.split(b"\x00", 1)[0].decode("utf-8", "replace")
    return value.hex()
