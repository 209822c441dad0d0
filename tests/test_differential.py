"""Differential test: flowtrap's decoded records against the ``netflow`` package's.

Every replay group of the public captures, and every exporter fixture in
``tests/fixtures/exports``, is fed datagram by datagram both into one flowtrap
``Decoder`` and into ``netflow`` 0.12.2. Wherever ``netflow`` decodes a source
without raising, both must yield the same multiset of records, compared field for
field as raw values on every field both decode. Each place where ``netflow`` is
known to be wrong is named below with its reason, and only that is left out.
"""

from __future__ import annotations

import ast
import ipaddress
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from netflow.ipfix import (
    IPFIXExportPacket,
    IPFIXFieldTypes,
    IPFIXTemplateNotRecognized,
)
from netflow.v5 import V5ExportPacket
from netflow.v9 import (
    V9_FIELD_TYPES,
    V9_SCOPE_TYPES,
    V9ExportPacket,
    V9TemplateNotRecognized,
)

from collector.decoder import Decoder
from collector.ie import V9_SCOPE, Kind
from collector.layout import Column, FieldSpec, Layout
from tests.conftest import CAPTURES, EXPORTS, require_corpus
from tests.corpus import datagrams, manifest

pytestmark = pytest.mark.corpus

FIXTURE_PREFIX = "fixture: "
IPFIX_HEADER_LENGTH = 16

# --- Where netflow is known to be wrong, and what is left out for it --------------

# netflow exceptions, by type name, and the fault in netflow behind each one; a
# source on which netflow raises is not compared at all.
NETFLOW_FAULTS = {
    "PaddingCalculationError": "netflow has no variable-length fields (RFC 7011 §7) "
    "and refuses a data set whose padding is not zero",
    "AttributeError": "netflow looks enterprise elements up by id in the IANA table "
    "and fails on ids it lacks",
    "IPFIXTemplateError": "netflow refuses zero-length IPFIX fields",
    "error": "netflow reads past the datagram: a v5 count beyond its records, v9 "
    "flowset padding taken for a record, or a v9 variable-length field",
    "RuntimeError": "netflow deletes from its template dict while iterating it on "
    "a template withdrawal",
}
NEVER_ARRIVES = "netflow drops a whole packet when one of its templates never arrives"
UNSUPPORTED = "netflow decodes NetFlow v1, flowtrap counts it unsupported_version"

# Record counts netflow invents, by source. Its v9 data loop runs while
# offset <= length - (4 - length % 4): a flowset whose unused tail is that long
# yields one more record, read from the next flowset.
NETFLOW_PHANTOM_RECORDS = {"fixture: softflowd-v9.pcap": 1}

# Fields and records left out of the comparison, with the reason for each.
ZERO_LENGTH = "netflow reads a zero-length field as 0; flowtrap omits it"
ENTERPRISE = "netflow names an enterprise element as the IANA element of its id"
REPEATED_IPFIX = "netflow keeps one value of an IPFIX element repeated in a template"
UNKNOWN_V9 = "netflow files every v9 id it has no name for as UNKNOWN_FIELD_TYPE"
OPTIONS_ALIGNMENT = (
    "netflow skips 2 bytes after a v9 options record that ends at offset 2 mod 4 "
    "and reads set padding as records"
)

V9_UNKNOWN = "UNKNOWN_FIELD_TYPE"
V9_SCOPE_PREFIX = "scope:"

# The v5 record as netflow names it, and the IANA names flowtrap uses.
V5_NAMES = {
    "IPV4_SRC_ADDR": "sourceIPv4Address",
    "IPV4_DST_ADDR": "destinationIPv4Address",
    "NEXT_HOP": "ipNextHopIPv4Address",
    "INPUT": "ingressInterface",
    "OUTPUT": "egressInterface",
    "IN_PACKETS": "packetDeltaCount",
    "IN_OCTETS": "octetDeltaCount",
    "FIRST_SWITCHED": "flowStartSysUpTime",
    "LAST_SWITCHED": "flowEndSysUpTime",
    "SRC_PORT": "sourceTransportPort",
    "DST_PORT": "destinationTransportPort",
    "TCP_FLAGS": "tcpControlBits",
    "PROTO": "protocolIdentifier",
    "TOS": "ipClassOfService",
    "SRC_AS": "bgpSourceAsNumber",
    "DST_AS": "bgpDestinationAsNumber",
    "SRC_MASK": "sourceIPv4PrefixLength",
    "DST_MASK": "destinationIPv4PrefixLength",
}

# netflow's v9 names of the fields detectors rely on, and their IANA names
# (RFC 3954 §8, RFC 7012). Written out so that flowtrap's naming is checked too;
# every other v9 field is paired by element id.
V9_NAMES = {
    "IN_BYTES": "octetDeltaCount",
    "IN_PKTS": "packetDeltaCount",
    "PROTOCOL": "protocolIdentifier",
    "SRC_TOS": "ipClassOfService",
    "TCP_FLAGS": "tcpControlBits",
    "L4_SRC_PORT": "sourceTransportPort",
    "IPV4_SRC_ADDR": "sourceIPv4Address",
    "INPUT_SNMP": "ingressInterface",
    "L4_DST_PORT": "destinationTransportPort",
    "IPV4_DST_ADDR": "destinationIPv4Address",
    "OUTPUT_SNMP": "egressInterface",
    "IPV4_NEXT_HOP": "ipNextHopIPv4Address",
    "LAST_SWITCHED": "flowEndSysUpTime",
    "FIRST_SWITCHED": "flowStartSysUpTime",
    "IPV6_SRC_ADDR": "sourceIPv6Address",
    "IPV6_DST_ADDR": "destinationIPv6Address",
    "IPV6_NEXT_HOP": "ipNextHopIPv6Address",
    "SRC_AS": "bgpSourceAsNumber",
    "DST_AS": "bgpDestinationAsNumber",
    "OUT_BYTES": "postOctetDeltaCount",
    "OUT_PKTS": "postPacketDeltaCount",
    "IN_SRC_MAC": "sourceMacAddress",
    "IN_DST_MAC": "destinationMacAddress",
    "SRC_VLAN": "vlanId",
    "IP_PROTOCOL_VERSION": "ipVersion",
    "DIRECTION": "flowDirection",
}

# The comparison must keep covering most of the corpus (numbers as of writing:
# 76 sources with records, 1,141 records, 19,693 fields).
MIN_SOURCES_WITH_RECORDS = 60
MIN_RECORDS = 1_000


# --- Feeding both decoders -----------------------------------------------------


def _sources() -> list[str]:
    """Return every exporter fixture and every replay group, as one list."""
    names = [f"{FIXTURE_PREFIX}{path.name}" for path in sorted(EXPORTS.glob("*.pcap"))]
    if (CAPTURES / "manifest.json").is_file():
        names += list(manifest()["replay_groups"])
    else:
        names.append("no-corpus")
    return names


SOURCES = _sources()


def _files(source: str) -> list[Path]:
    """Return the files of a fixture or replay group, in replay order."""
    if source.startswith(FIXTURE_PREFIX):
        return [EXPORTS / source.removeprefix(FIXTURE_PREFIX)]
    corpus = require_corpus()
    return [corpus / name for name in manifest()["replay_groups"][source]["files"]]


def source_datagrams(source: str) -> Iterator[tuple[str, int, float, bytes]]:
    """Yield (exporter, port, received, data) for every export packet of a source."""
    for path in _files(source):
        yield from datagrams(path)


FlowtrapRecord = tuple[Layout, int, dict[str, Any]]
NetflowRecord = tuple[int, dict[Any, Any]]


def flowtrap_records(source: str) -> list[FlowtrapRecord]:
    """Decode a source with flowtrap: (layout, version, values) per record."""
    decoder = Decoder()
    records: list[FlowtrapRecord] = []
    for exporter, port, received, data in source_datagrams(source):
        out = decoder.decode(data, exporter, port, received)
        for batch in out.flows + out.options:
            version = batch.context.version
            records += [
                (batch.layout, version, batch.layout.values(r)) for r in batch.rows
            ]
    assert decoder.stats.errors["decoder_bug"] == 0
    return records


class NotComparable(Exception):
    """A source that netflow cannot decode; the message says why."""


@dataclass(slots=True)
class _Scope:
    """One netflow template scope: its templates and the packets to retry."""

    templates: dict[int, Any] = field(default_factory=dict)
    retry: list[bytes] = field(default_factory=list)


def _ipfix_messages(data: bytes) -> Iterator[bytes]:
    """Split chained IPFIX messages; netflow reads one message per call."""
    offset = 0
    while len(data) - offset >= IPFIX_HEADER_LENGTH and data[offset] == 0:
        length = int.from_bytes(data[offset + 2 : offset + 4], "big")
        if data[offset + 1] != 10 or length < IPFIX_HEADER_LENGTH:
            return
        yield data[offset : offset + length]
        offset += length


def netflow_records(source: str) -> list[NetflowRecord]:
    """Decode a source with netflow, the way its own collector drives it.

    netflow keys templates by id alone, so each (exporter, version, observation
    domain) gets its own templates dict and only its decoding is compared. A packet
    naming an unknown template is retried after the next packet that brings
    templates, as netflow's collector does. The version classes are called
    directly: ``parse_packet`` takes any datagram that decodes as UTF-8 for hex.
    """
    records: list[NetflowRecord] = []
    scopes: dict[tuple[str, int, int], _Scope] = {}
    for exporter, _, _, data in source_datagrams(source):
        version = int.from_bytes(data[:2], "big")
        if version == 5:
            for packet in _v5_packets(data):
                records += [(5, flow.data) for flow in V5ExportPacket(packet).flows]
        elif version == 9:
            domain = int.from_bytes(data[16:20], "big")
            scope = scopes.setdefault((exporter, 9, domain), _Scope())
            _netflow_packet(records, scope, data, 9)
        elif version == 10:
            for message in _ipfix_messages(data):
                domain = int.from_bytes(message[12:16], "big")
                scope = scopes.setdefault((exporter, 10, domain), _Scope())
                _netflow_packet(records, scope, message, 10)
        elif version == 1:
            raise NotComparable(UNSUPPORTED)
    if any(scope.retry for scope in scopes.values()):
        raise NotComparable(NEVER_ARRIVES)
    return records


def _v5_packets(data: bytes) -> list[bytes]:
    """Split v5 packets written back to back; netflow reads only the first."""
    packets = []
    offset = 0
    while len(data) - offset >= 24 and data[offset : offset + 2] == b"\x00\x05":
        count = int.from_bytes(data[offset + 2 : offset + 4], "big")
        end = min(len(data), offset + 24 + 48 * count)
        packets.append(data[offset:end])
        offset = end
    return packets


def _netflow_parse(data: bytes, version: int, templates: dict[int, Any]) -> Any:
    """Parse one v9 or IPFIX packet with netflow."""
    if version == 9:
        return V9ExportPacket(data, templates)
    return IPFIXExportPacket(data, templates)


def _netflow_packet(
    records: list[NetflowRecord], scope: _Scope, data: bytes, version: int
) -> None:
    """Parse one packet, then retry held packets if it brought templates."""
    try:
        packet = _netflow_parse(data, version, scope.templates)
    except (V9TemplateNotRecognized, IPFIXTemplateNotRecognized):
        scope.retry.append(data)
        return
    _take(records, packet, version)
    if packet.contains_new_templates and scope.retry:
        pending, scope.retry = scope.retry, []
        for held in pending:
            try:
                _take(records, _netflow_parse(held, version, scope.templates), version)
            except (V9TemplateNotRecognized, IPFIXTemplateNotRecognized):
                scope.retry.append(held)


def _take(records: list[NetflowRecord], packet: Any, version: int) -> None:
    """Keep a parsed packet's records; v9 options records merge scopes and fields."""
    records += [(version, flow.data) for flow in packet.flows]
    if version == 9:
        for option in packet.options:
            merged = {f"{V9_SCOPE_PREFIX}{k}": v for k, v in option.scopes.items()}
            records.append((9, merged | option.data))


# --- Pairing netflow keys with flowtrap fields -------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Where one netflow key's value sits in a flowtrap record, and its type."""

    name: str
    kind: Kind
    length: int


@dataclass(frozen=True, slots=True)
class Spec:
    """How netflow sees the records of one flowtrap layout."""

    keys: frozenset[Any]
    compared: dict[Any, Target]
    left_out: tuple[str, ...] = ()
    excluded: str | None = None


def _columns(layout: Layout) -> Iterator[tuple[FieldSpec, Column | None]]:
    """Pair each template field with its row column (None when zero-length)."""
    columns = iter(layout.columns)
    for spec in layout.fields:
        yield spec, (None if spec.length == 0 else next(columns))


def _v9_key(spec: FieldSpec, options: bool) -> Any:
    """Return the key netflow files a v9 field under."""
    if spec.enterprise == V9_SCOPE:
        scope = V9_SCOPE_TYPES.get(spec.element_id, spec.element_id)
        return f"{V9_SCOPE_PREFIX}{scope}"
    name = V9_FIELD_TYPES.get(spec.element_id)
    if name is not None:
        return name
    iana = IPFIXFieldTypes.by_id(spec.element_id)
    if options and iana is not None:
        # netflow names v9 options fields it lacks by their IANA name.
        return iana.name
    return V9_UNKNOWN


def _v9_spec(layout: Layout) -> Spec:
    """Describe a v9 layout as netflow decodes it: a repeated id keeps its last."""
    compared: dict[Any, Target] = {}
    reasons: dict[Any, str] = {}
    for spec, column in _columns(layout):
        key = _v9_key(spec, layout.options)
        compared.pop(key, None)
        reasons.pop(key, None)
        if key == V9_UNKNOWN:
            reasons[key] = UNKNOWN_V9
        elif column is None:
            reasons[key] = ZERO_LENGTH
        else:
            name = V9_NAMES.get(key, column.name)
            compared[key] = Target(name, column.kind, column.length)
    keys = frozenset(compared) | frozenset(reasons)
    if layout.options and layout.record_length % 4:
        return Spec(keys, {}, excluded=OPTIONS_ALIGNMENT)
    return Spec(keys, compared, tuple(reasons.values()))


def _iana_name(element_id: int) -> str:
    """Return the IANA name netflow files an IPFIX element id under."""
    iana = IPFIXFieldTypes.by_id(element_id)
    return iana.name if iana is not None else f"field{element_id}"


def _ipfix_spec(layout: Layout) -> Spec:
    """Describe an IPFIX layout as netflow decodes it: by element id alone."""
    uses: Counter[str] = Counter()
    enterprise: set[str] = set()
    targets: dict[str, Target] = {}
    for spec, column in _columns(layout):
        key = _iana_name(spec.element_id)
        uses[key] += 1
        if spec.enterprise:
            enterprise.add(key)
        if column is not None:
            targets[key] = Target(column.name, column.kind, column.length)
    reasons = dict.fromkeys(enterprise, ENTERPRISE)
    reasons |= {
        k: REPEATED_IPFIX for k, n in uses.items() if n > 1 and k not in reasons
    }
    compared = {key: t for key, t in targets.items() if key not in reasons}
    return Spec(frozenset(uses), compared, tuple(reasons.values()))


def _v5_spec(layout: Layout) -> Spec:
    """Describe the v5 record with the names netflow gives its fields."""
    by_name = {column.name: column for column in layout.columns}
    compared = {
        key: Target(name, by_name[name].kind, by_name[name].length)
        for key, name in V5_NAMES.items()
    }
    return Spec(frozenset(V5_NAMES), compared)


def spec_for(layout: Layout, version: int) -> Spec:
    """Describe how netflow sees the records of one flowtrap layout."""
    if version == 5:
        return _v5_spec(layout)
    if version == 9:
        return _v9_spec(layout)
    return _ipfix_spec(layout)


# --- Reducing values to what was on the wire ---------------------------------------


def _float_bits(value: float, length: int) -> int:
    """Return the IEEE 754 bits of a float as exported."""
    return int.from_bytes(struct.pack(">f" if length == 4 else ">d", value), "big")


def flowtrap_raw(target: Target, value: Any) -> Any:
    """Reduce a flowtrap value to the unsigned integer (or text) on the wire."""
    if target.kind is Kind.STRING:
        return value
    if isinstance(value, float):
        return _float_bits(value, target.length)
    if isinstance(value, int):
        return value % (1 << (8 * target.length))
    if target.kind in (Kind.IPV4, Kind.IPV6) and ("." in value or ":" in value):
        return int(ipaddress.ip_address(value))
    if target.kind is Kind.MAC and ":" in value:
        return int(value.replace(":", ""), 16)
    return int(value, 16) if value else 0


def netflow_raw(target: Target, value: Any) -> Any:
    """Reduce a netflow value to the unsigned integer (or text) on the wire."""
    if target.kind is Kind.STRING:
        return _netflow_text(target, value)
    if isinstance(value, str):  # v9 addresses
        return int(ipaddress.ip_address(value))
    if isinstance(value, tuple):  # IPFIX NTP timestamps: (seconds, fraction)
        return (value[0] << 32) | value[1]
    if isinstance(value, float):
        return _float_bits(value, target.length)
    if isinstance(value, bytes):
        return int.from_bytes(value, "big")
    return value % (1 << (8 * target.length))


def _netflow_text(target: Target, value: Any) -> str:
    """Decode a string field the way flowtrap does, from netflow's value."""
    if isinstance(value, int):  # v9 reads every field as an integer
        raw = value.to_bytes(target.length, "big")
    elif isinstance(value, bytes):
        raw = value
    elif value.startswith(("b'", 'b"')):
        # netflow writes IPFIX strings that are not UTF-8 as the repr of the bytes.
        raw = ast.literal_eval(value)
    else:
        return str(value).rstrip("\x00")
    return raw.rstrip(b"\x00").decode("utf-8", "replace")


# --- Comparing ---------------------------------------------------------------------

Canonical = tuple[tuple[str, Any], ...]


def _canonical(spec: Spec, raw: Callable[[Any, Target], Any]) -> Canonical:
    """Return one record's compared fields as sorted (netflow key, raw value)."""
    return tuple(sorted((str(key), raw(key, t)) for key, t in spec.compared.items()))


@dataclass(slots=True)
class Comparison:
    """Both decoders' records of one source, reduced to what both decode."""

    flowtrap: Counter[Canonical] = field(default_factory=Counter)
    netflow: Counter[Canonical] = field(default_factory=Counter)
    unmatched: list[dict[Any, Any]] = field(default_factory=list)
    left_out: Counter[str] = field(default_factory=Counter)
    fields: int = 0


def compare(ours: list[FlowtrapRecord], theirs: list[NetflowRecord]) -> Comparison:
    """Reduce both sides' records to the fields both decode, as multisets."""
    result = Comparison()
    specs: dict[tuple[int, frozenset[Any]], Spec] = {}
    for layout, version, values in ours:
        spec = spec_for(layout, version)
        known = specs.setdefault((version, spec.keys), spec)
        assert known == spec, f"two templates look alike to netflow: {spec.keys}"
        if spec.excluded:
            result.left_out[spec.excluded] += 1
            continue
        result.left_out.update(spec.left_out)
        result.flowtrap[
            _canonical(spec, lambda _, t, v=values: flowtrap_raw(t, v[t.name]))
        ] += 1

    for version, record in theirs:
        spec = specs.get((version, frozenset(record)))
        if spec is None:
            result.unmatched.append(record)
        elif not spec.excluded:
            canonical = _canonical(spec, lambda k, t, r=record: netflow_raw(t, r[k]))
            result.netflow[canonical] += 1
            result.fields += len(canonical)
    return result


@cache
def outcome(source: str) -> Comparison | str:
    """Compare one source, or return why netflow cannot decode it."""
    try:
        theirs = netflow_records(source)
    except NotComparable as reason:
        return str(reason)
    except Exception as error:  # netflow raising is what makes a source not compared
        name = type(error).__name__
        return f"{NETFLOW_FAULTS.get(name, 'netflow raised')} ({name}: {error})"
    return compare(flowtrap_records(source), theirs)


# --- The tests ---------------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
def test_flowtrap_agrees_with_netflow_field_for_field(source: str) -> None:
    """Where netflow decodes a source both agree; where not, its reason is a known one.

    A source netflow cannot decode is not compared, but the reason must be one
    this file names (a new netflow failure, or a fixed one, makes this fail).
    """
    result = outcome(source)
    if isinstance(result, str):
        named = (*NETFLOW_FAULTS.values(), NEVER_ARRIVES, UNSUPPORTED)
        assert result.startswith(named), (
            f"netflow failed for an unnamed reason: {result}"
        )
        return

    only_flowtrap = result.flowtrap - result.netflow
    only_netflow = result.netflow - result.flowtrap
    assert not result.unmatched, "netflow records whose fields fit no flowtrap template"
    assert not only_flowtrap, (
        f"flowtrap records netflow lacks: {list(only_flowtrap)[:2]}"
    )
    assert only_netflow.total() == NETFLOW_PHANTOM_RECORDS.get(source, 0), (
        f"netflow records flowtrap lacks: {list(only_netflow)[:2]}"
    )


def test_differential_covers_most_of_the_corpus() -> None:
    """The comparison reaches most sources and records, for the reasons named."""
    require_corpus()
    compared = {s: r for s in SOURCES if isinstance(r := outcome(s), Comparison)}
    skipped = {s: r for s in SOURCES if isinstance(r := outcome(s), str)}
    named = (*NETFLOW_FAULTS.values(), NEVER_ARRIVES, UNSUPPORTED)

    with_records = [s for s, r in compared.items() if r.netflow]
    records = sum(r.netflow.total() for r in compared.values())
    fields = sum(r.fields for r in compared.values())
    print(
        f"\ndifferential: {len(compared)} of {len(SOURCES)} sources compared, "
        f"{len(with_records)} with records; {records} records, {fields} fields"
    )
    for source, reason in skipped.items():
        print(f"  not compared: {source}: {reason}")

    assert all(reason.startswith(named) for reason in skipped.values())
    assert len(with_records) >= MIN_SOURCES_WITH_RECORDS
    assert records >= MIN_RECORDS
