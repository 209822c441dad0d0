"""Export packets filled with varied flow records, in any profile's layout.

Each data record gets its own addresses, ports, protocol, counters and times.
A small share is UDP to port 631 from an internal host to an external one, so
that the CUPS detector fires on realistic traffic, and a smaller share is
internal-to-internal UDP/631, which passes the cheap filter but finds nothing.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from bench.profiles import Profile
from collector.layout import FieldSpec

# Records per export packet: softflowd and pmacctd send up to 30.
MIN_RECORDS = 20
MAX_RECORDS = 30
# Keep a packet within one Ethernet frame where the record size allows it.
PACKET_BUDGET = 1400

UDP, TCP, ICMP = 17, 6, 1
CUPS_PORT = 631
_COMMON_PORTS = (443, 443, 443, 80, 53, 123, 22, 25, 993, 3389, 8080, 5060)
_NTP_UNIX_OFFSET = 2_208_988_800


@dataclass(frozen=True, slots=True)
class Mix:
    """What share of the records is what, and how old the flows are."""

    # Internal → external UDP/631: each such record is one finding.
    finding_share: float = 0.01
    # Internal → internal UDP/631: passes the cheap filter, finds nothing.
    near_miss_share: float = 0.005
    # Flows end this many seconds before the export time (plus up to 60 s).
    age_seconds: float = 0.0
    # Every record a finding, each with its own (source, destination) pair.
    all_findings: bool = False


@dataclass(frozen=True, slots=True)
class Packet:
    """One export packet and what it carries."""

    data: bytes
    records: int
    packets: int
    findings: int


@dataclass(frozen=True, slots=True)
class Flow:
    """The values of one generated flow record."""

    src: bytes
    dst: bytes
    sport: int
    dport: int
    protocol: int
    packets: int
    octets: int
    start_ms: int
    end_ms: int
    finding: bool


@dataclass(frozen=True, slots=True)
class Clock:
    """The export packet's clock: epoch seconds and the exporter's uptime."""

    export_secs: int
    uptime_ms: int

    @property
    def export_ms(self) -> int:
        """Return the export time in epoch milliseconds."""
        return self.export_secs * 1000

    def uptime_at(self, epoch_ms: int) -> int:
        """Return the exporter's sysUptime at an epoch time."""
        return (self.uptime_ms - (self.export_ms - epoch_ms)) % (1 << 32)


def records_per_packet(profile: Profile) -> int:
    """Return how many records one packet of this profile carries (20 to 30)."""
    fit = PACKET_BUDGET // max(1, profile.record_length)
    return max(MIN_RECORDS, min(MAX_RECORDS, fit))


def _address(rng: random.Random, internal: bool, v6: bool, serial: int) -> bytes:
    """Return an internal or external address; serial makes pairs distinct."""
    if v6:
        prefix = bytes.fromhex("fd00000000000001") if internal else b"\x20\x01\x0d\xb8"
        return (prefix + rng.randbytes(16))[:12] + serial.to_bytes(4, "big")
    if internal:
        return bytes((10, (serial >> 16) & 0xFF, (serial >> 8) & 0xFF, serial & 0xFF))
    # 198.18.0.0/15 (benchmarking) and 203.0.113.0/24: external, never contacted.
    if rng.random() < 0.5:
        return bytes(
            (198, 18 + (serial >> 16) % 2, (serial >> 8) & 0xFF, serial & 0xFF)
        )
    return bytes((203, 0, 113, serial & 0xFF))


def make_flow(
    rng: random.Random, mix: Mix, v6: bool, clock: Clock, serial: int
) -> Flow:
    """Draw one flow record's values."""
    roll = rng.random()
    finding = mix.all_findings or roll < mix.finding_share
    near_miss = not finding and roll < mix.finding_share + mix.near_miss_share
    if finding or near_miss:
        protocol, dport = UDP, CUPS_PORT
        src_internal, dst_internal = True, near_miss
    else:
        protocol = rng.choices((TCP, UDP, ICMP), (70, 27, 3))[0]
        dport = rng.choice(_COMMON_PORTS) if protocol != ICMP else 0
        src_internal, dst_internal = rng.random() < 0.8, rng.random() < 0.3
    src_serial = serial if mix.all_findings else rng.getrandbits(20)
    end_ms = clock.export_ms - int(mix.age_seconds * 1000) - rng.randrange(60_000)
    packets = rng.randrange(1, 2000)
    return Flow(
        src=_address(rng, src_internal, v6, src_serial),
        dst=_address(rng, dst_internal, v6, rng.getrandbits(20)),
        sport=rng.randrange(1024, 65536),
        dport=dport,
        protocol=protocol,
        packets=packets,
        octets=packets * rng.randrange(40, 1500),
        start_ms=end_ms - rng.randrange(120_000),
        end_ms=end_ms,
        finding=finding,
    )


def _ntp(epoch_ms: int) -> int:
    """Return a 64-bit NTP timestamp (RFC 7011 §6.1.9) for an epoch time."""
    seconds, millis = divmod(epoch_ms, 1000)
    return ((seconds + _NTP_UNIX_OFFSET) << 32) | (millis * (1 << 32) // 1000)


def _value(spec: FieldSpec, flow: Flow, clock: Clock) -> int | bytes | None:
    """Return the value of one known element for a flow, or None if not known."""
    element = spec.element_id if spec.enterprise == 0 else -1
    simple: dict[int, int | bytes] = {
        1: flow.octets,
        2: flow.packets,
        85: flow.octets,
        86: flow.packets,
        4: flow.protocol,
        7: flow.sport,
        11: flow.dport,
        8: flow.src,
        12: flow.dst,
        27: flow.src,
        28: flow.dst,
        22: clock.uptime_at(flow.start_ms),
        21: clock.uptime_at(flow.end_ms),
        150: flow.start_ms // 1000,
        151: flow.end_ms // 1000,
        152: flow.start_ms,
        153: flow.end_ms,
        154: _ntp(flow.start_ms),
        155: _ntp(flow.end_ms),
        156: _ntp(flow.start_ms),
        157: _ntp(flow.end_ms),
        158: (clock.export_ms - flow.start_ms) * 1000,
        159: (clock.export_ms - flow.end_ms) * 1000,
        160: clock.export_ms - clock.uptime_ms,
        34: 1,
        305: 1,
    }
    return simple.get(element)


def encode_field(
    spec: FieldSpec, flow: Flow, clock: Clock, rng: random.Random
) -> bytes:
    """Return the bytes of one field: its value where known, else random bytes."""
    value = _value(spec, flow, clock)
    if isinstance(value, bytes):
        if len(value) == spec.length:
            return value
        return rng.randbytes(spec.length)
    if isinstance(value, int):
        return (value % (1 << (8 * spec.length))).to_bytes(spec.length, "big")
    return rng.randbytes(spec.length)


def encode_record(
    profile: Profile, flow: Flow, clock: Clock, rng: random.Random
) -> bytes:
    """Return one data record in the profile's layout."""
    return b"".join(encode_field(spec, flow, clock, rng) for spec in profile.fields)


def is_v6(profile: Profile) -> bool:
    """Return True when the profile carries IPv6 and no IPv4 source address."""
    ids = {spec.element_id for spec in profile.fields if spec.enterprise == 0}
    return 27 in ids and 8 not in ids


_V5_HEADER = struct.Struct(">HHIIIIBBH")
_V9_HEADER = struct.Struct(">HHIIII")
_IPFIX_HEADER = struct.Struct(">HHIII")
_SET_HEADER = struct.Struct(">HH")


def template_packet(profile: Profile, clock: Clock) -> bytes:
    """Return an export packet that defines the profile's template."""
    ipfix = profile.version == 10
    record = _SET_HEADER.pack(profile.template_id, len(profile.fields))
    for spec in profile.fields:
        if ipfix and spec.enterprise:
            # RFC 7011 §3.2: the enterprise bit, then the enterprise number.
            record += _SET_HEADER.pack(spec.element_id | 0x8000, spec.length)
            record += spec.enterprise.to_bytes(4, "big")
        else:
            record += _SET_HEADER.pack(spec.element_id, spec.length)
    flowset = _SET_HEADER.pack(2 if ipfix else 0, 4 + len(record)) + record
    return _header(profile, clock, 1, len(flowset)) + flowset


def _header(profile: Profile, clock: Clock, count: int, body_length: int) -> bytes:
    """Return the export packet header for a body; sequence numbers start at 0."""
    if profile.version == 5:
        return _V5_HEADER.pack(
            5, count, clock.uptime_ms, clock.export_secs, 0, 0, 0, 0, 0
        )
    if profile.version == 9:
        return _V9_HEADER.pack(
            9, count, clock.uptime_ms, clock.export_secs, 0, profile.domain
        )
    length = _IPFIX_HEADER.size + body_length
    return _IPFIX_HEADER.pack(10, length, clock.export_secs, 0, profile.domain)


def data_packet(
    profile: Profile, mix: Mix, clock: Clock, rng: random.Random, serial: int
) -> Packet:
    """Return one data export packet of 20-30 records in the profile's layout."""
    count = records_per_packet(profile) if profile.version != 5 else MAX_RECORDS
    v6 = is_v6(profile)
    flows = [make_flow(rng, mix, v6, clock, serial + index) for index in range(count)]
    records = b"".join(encode_record(profile, flow, clock, rng) for flow in flows)
    if profile.version == 5:
        body = records
    else:
        body = _SET_HEADER.pack(profile.template_id, 4 + len(records)) + records
    return Packet(
        data=_header(profile, clock, count, len(body)) + body,
        records=count,
        packets=sum(flow.packets for flow in flows),
        findings=sum(flow.finding for flow in flows),
    )


def data_packets(
    profile: Profile, mix: Mix, clock: Clock, count: int, seed: int
) -> list[Packet]:
    """Return count data packets; the same seed gives the same bytes.

    With ``Mix.all_findings`` the seed also offsets the source addresses, so
    that exporters built with different seeds report different pairs.
    """
    rng = random.Random(seed)
    first = seed * count * MAX_RECORDS
    return [
        data_packet(profile, mix, clock, rng, serial=first + index * MAX_RECORDS)
        for index in range(count)
    ]
