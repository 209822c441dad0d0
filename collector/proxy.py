"""PROXY protocol v1 and v2 headers on UDP export packets.

A load balancer in front of several collectors (nginx's stream module with
``proxy_protocol on;``) sends every export packet from its own address, with a
PROXY header naming the exporter in front. flowtrap trusts such a header only
from the configured load balancers; everything downstream (templates, sequence
accounting, metrics, the allowlist, ``observer.ip``) then sees the exporter the
header names.

nginx 1.22 writes the text form (v1) even over UDP, ``PROXY TCP4 ...``; the
binary form (v2) is parsed too, for HAProxy-style senders. The wire formats
are those of the PROXY protocol specification (haproxy.org, proxy-protocol.txt).
"""

from __future__ import annotations

import logging
import socket
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from collector.allowlist import Allowlist
from detectors.networks import IPNetwork

log = logging.getLogger(__name__)

# v2 starts with this 12-byte signature (spec §2.2); v1 with "PROXY " (§2.1).
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
# Any export packet starting with one of these carries a PROXY header. Neither
# can start NetFlow or IPFIX: their version field's first byte is 0.
PREFIXES = (V2_SIGNATURE, V1_PREFIX)

# A v1 line is at most 107 bytes, CRLF included (spec §2.1).
V1_MAX = 107
_V2_FIXED = struct.Struct(">12sBBH")
_V2_TLV = struct.Struct(">BH")
# v2 family/transport byte (spec §2.2, 14th byte): what the address block holds.
_V2_UNSPEC = 0x00
_V2_FAMILIES = {
    0x11: (socket.AF_INET, 4),  # TCP over IPv4
    0x12: (socket.AF_INET, 4),  # UDP over IPv4
    0x21: (socket.AF_INET6, 16),  # TCP over IPv6
    0x22: (socket.AF_INET6, 16),  # UDP over IPv6
}
_V2_UNIX = (0x31, 0x32)
_V2_LOCAL = 0x20
_V2_PROXY = 0x21
_V1_FAMILIES = {b"TCP4": socket.AF_INET, b"TCP6": socket.AF_INET6}

# Reasons, each its own counter.
UNTRUSTED = "proxy_untrusted"
MALFORMED = "proxy_malformed"
UNEXPECTED = "proxy_header_unexpected"
MISSING = "proxy_header_missing"
REASONS = (UNTRUSTED, MALFORMED, UNEXPECTED, MISSING)
# (sender, reason) pairs remembered for the log; the rest are only counted.
MAX_LOGGED_SENDERS = 256


class ProxyHeaderError(ValueError):
    """A PROXY header that does not parse; ``detail`` says which check failed."""

    def __init__(self, detail: str) -> None:
        """Keep the failed check for tests and the debug log."""
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What a PROXY header says: the exporter, and where the export packet starts.

    ``exporter`` is None for a LOCAL command (v2), ``UNKNOWN`` (v1) or an
    unspecified family: the header names nobody, so the sender stands for itself.
    """

    exporter: str | None
    port: int
    length: int


def parse(data: bytes) -> ProxyHeader:
    """Parse the PROXY header at the start of ``data``, or raise ProxyHeaderError."""
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    if data.startswith(V1_PREFIX):
        return _parse_v1(data)
    raise ProxyHeaderError("no PROXY header")


def _parse_v2(data: bytes) -> ProxyHeader:
    """Parse the binary form (spec §2.2)."""
    if len(data) < _V2_FIXED.size:
        raise ProxyHeaderError("v2 header cut short")
    _, version_command, family, length = _V2_FIXED.unpack_from(data)
    end = _V2_FIXED.size + length
    if version_command >> 4 != 2:
        raise ProxyHeaderError("v2 version is not 2")
    if version_command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyHeaderError("v2 command is neither LOCAL nor PROXY")
    if end > len(data):
        raise ProxyHeaderError("v2 address block runs past the datagram")

    # LOCAL (the balancer's own health check) and UNSPEC carry no exporter;
    # whatever follows is skipped by the declared length (spec §2.2).
    if version_command == _V2_LOCAL or family == _V2_UNSPEC:
        return ProxyHeader(None, 0, end)
    if family in _V2_UNIX:
        raise ProxyHeaderError("v2 AF_UNIX names no exporter address")
    found = _V2_FAMILIES.get(family)
    if found is None:
        raise ProxyHeaderError("v2 family or transport unknown")
    kind, size = found
    addresses = _V2_FIXED.size + 2 * size + 4
    if addresses > end:
        raise ProxyHeaderError("v2 address block shorter than its family")
    start = _V2_FIXED.size
    exporter = socket.inet_ntop(kind, data[start : start + size])
    (port,) = struct.unpack_from(">H", data, start + 2 * size)
    _check_tlvs(data, addresses, end)
    return ProxyHeader(exporter, port, end)


def _check_tlvs(data: bytes, offset: int, end: int) -> None:
    """Walk the TLVs after the addresses by their lengths; none is interpreted."""
    while offset < end:
        if offset + _V2_TLV.size > end:
            raise ProxyHeaderError("v2 TLV header cut short")
        _, length = _V2_TLV.unpack_from(data, offset)
        offset += _V2_TLV.size + length
        if offset > end:
            raise ProxyHeaderError("v2 TLV runs past the header")


def _parse_v1(data: bytes) -> ProxyHeader:
    """Parse the text form (spec §2.1): ``PROXY TCP4 SRC DST SPORT DPORT\\r\\n``."""
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        raise ProxyHeaderError("v1 line has no CRLF within 107 bytes")
    fields = data[:end].split(b" ")
    length = end + 2
    if fields[1:2] == [b"UNKNOWN"]:
        # The sender could not tell; the rest of the line is to be ignored.
        return ProxyHeader(None, 0, length)
    if len(fields) != 6:
        raise ProxyHeaderError("v1 line does not have six fields")
    kind = _V1_FAMILIES.get(fields[1])
    if kind is None:
        raise ProxyHeaderError("v1 protocol is not TCP4, TCP6 or UNKNOWN")
    exporter = _v1_address(kind, fields[2])
    _v1_address(kind, fields[3])
    port = _v1_port(fields[4])
    _v1_port(fields[5])
    return ProxyHeader(exporter, port, length)


def _v1_address(kind: int, text: bytes) -> str:
    """Return an address in its canonical text, or raise for any other spelling."""
    try:
        decoded = text.decode("ascii")
        canonical = socket.inet_ntop(kind, socket.inet_pton(kind, decoded))
    except (UnicodeDecodeError, OSError, ValueError):
        raise ProxyHeaderError("v1 address does not match its protocol") from None
    # IPv4 must be written exactly as inet_ntop would (no leading zeros).
    if kind == socket.AF_INET and canonical != decoded:
        raise ProxyHeaderError("v1 address does not match its protocol")
    return canonical


def _v1_port(text: bytes) -> int:
    """Return a decimal port 0-65535 written without leading zeros."""
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[:1] == b"0"):
        raise ProxyHeaderError("v1 port is not a number from 0 to 65535")
    port = int(text)
    if port > 65_535:
        raise ProxyHeaderError("v1 port is not a number from 0 to 65535")
    return port


class ProxyProtocol:
    """Takes PROXY headers off export packets from trusted load balancers.

    With no trusted senders (the option off), a datagram that starts with a
    PROXY header is dropped and counted: flowtrap never believes one it was
    not told to expect.
    """

    def __init__(self, trusted: Iterable[IPNetwork | str] | None = None) -> None:
        """Parse the trusted networks once; None trusts nobody."""
        self.trusted = None if trusted is None else Allowlist(trusted)
        self.errors: Counter[str] = Counter()
        self.senders: Counter[tuple[str, str]] = Counter()
        self._reported: dict[tuple[str, str], int] = {}

    def unwrap(
        self, data: bytes, sender: str, port: int
    ) -> tuple[str, int, bytes] | None:
        """Return (exporter, port, export packet), or None when dropped and counted.

        The listener calls this for every datagram when load balancers are
        trusted, and otherwise only for one that starts with a PROXY header.
        """
        trusted = self.trusted
        if trusted is None:
            self._count(sender, UNEXPECTED)
            return None
        if not trusted.permits(sender):
            if data.startswith(PREFIXES):
                self._count(sender, UNTRUSTED)
                return None
            # A direct exporter beside the load balancer.
            return sender, port, data
        try:
            header = parse(data)
        except ProxyHeaderError:
            self._count(sender, MALFORMED if data.startswith(PREFIXES) else MISSING)
            return None
        if header.exporter is None:
            return sender, port, data[header.length :]
        return header.exporter, header.port, data[header.length :]

    def _count(self, sender: str, reason: str) -> None:
        """Count a dropped datagram; remember its sender for the log, up to a cap."""
        self.errors[reason] += 1
        key = (sender, reason)
        if key in self.senders or len(self.senders) < MAX_LOGGED_SENDERS:
            self.senders[key] += 1

    def report(self) -> None:
        """Warn about each (sender, reason) that dropped datagrams since last time."""
        senders = dict.copy(self.senders)
        for (sender, reason), count in senders.items():
            new = count - self._reported.get((sender, reason), 0)
            if new > 0:
                log.warning(
                    "datagram with a bad or unexpected proxy header",
                    extra={"exporter": sender, "reason": reason, "count": new},
                )
        self._reported = senders
