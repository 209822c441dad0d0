"""Export packets built one wire field per line, for protocol tests."""

from __future__ import annotations

import struct


def u8(value: int) -> bytes:
    """One unsigned byte."""
    return struct.pack(">B", value)


def u16(value: int) -> bytes:
    """One unsigned 16-bit big-endian integer."""
    return struct.pack(">H", value)


def u32(value: int) -> bytes:
    """One unsigned 32-bit big-endian integer."""
    return struct.pack(">I", value)


def ipv4(text: str) -> bytes:
    """Four address bytes from dotted text."""
    return bytes(int(part) for part in text.split("."))


def flowset(set_id: int, body: bytes) -> bytes:
    """A flowset: id, length (header included), body."""
    return u16(set_id) + u16(4 + len(body)) + body


def v9_header(
    count: int = 0, uptime: int = 10_000, secs: int = 1_768_471_200, source_id: int = 0
) -> bytes:
    """A NetFlow v9 header (RFC 3954 §5.1)."""
    return (
        u16(9)  # version
        + u16(count)  # count (records, informational only)
        + u32(uptime)  # sysUptime, ms
        + u32(secs)  # UNIX secs
        + u32(1)  # sequence number
        + u32(source_id)  # source id
    )


def ipfix_header(body_length: int, domain: int = 0, secs: int = 1_768_471_200) -> bytes:
    """An IPFIX message header (RFC 7011 §3.1) for a body of the given length."""
    return (
        u16(10)  # version
        + u16(16 + body_length)  # message length
        + u32(secs)  # export time
        + u32(1)  # sequence number
        + u32(domain)  # observation domain id
    )


def ipfix(*sets: bytes, domain: int = 0) -> bytes:
    """An IPFIX message holding the given sets."""
    body = b"".join(sets)
    return ipfix_header(len(body), domain) + body


# A five-tuple template: srcaddr, dstaddr, srcport, dstport, protocol, packets,
# bytes — 4+4+2+2+1+4+4 = 21 bytes a record.
FIVE_TUPLE_FIELDS = (
    (8, 4),  # sourceIPv4Address
    (12, 4),  # destinationIPv4Address
    (7, 2),  # sourceTransportPort
    (11, 2),  # destinationTransportPort
    (4, 1),  # protocolIdentifier
    (2, 4),  # packetDeltaCount
    (1, 4),  # octetDeltaCount
)


def template_record(template_id: int, fields: tuple[tuple[int, int], ...]) -> bytes:
    """A template record: id, field count, then (element id, length) pairs."""
    return (
        u16(template_id)
        + u16(len(fields))
        + b"".join(u16(eid) + u16(length) for eid, length in fields)
    )


def five_tuple(
    src: str, dst: str, sport: int, dport: int, proto: int = 17, pkts: int = 1
) -> bytes:
    """One data record in the FIVE_TUPLE_FIELDS layout."""
    return (
        ipv4(src)
        + ipv4(dst)
        + u16(sport)
        + u16(dport)
        + u8(proto)
        + u32(pkts)  # packets
        + u32(pkts * 100)  # bytes
    )
