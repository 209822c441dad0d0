"""Reading export packets out of pcap and pcapng captures with dpkt.

Every UDP payload in the capture is taken as one export packet from that
datagram's IP source address, stamped with the capture's own clock, so a replay of
the same file always sees the same times.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import dpkt


@dataclass(frozen=True, slots=True)
class Datagram:
    """One received export packet: who sent it, when, and its bytes."""

    exporter: str
    port: int
    received: float
    data: bytes


class CaptureError(Exception):
    """A capture file that cannot be read at all."""


def _reader(handle: BinaryIO, path: Path) -> Any:
    """Open a pcap or pcapng reader by the file's magic number."""
    magic = handle.read(4)
    handle.seek(0)
    try:
        if magic == b"\x0a\x0d\x0d\x0a":
            return dpkt.pcapng.Reader(handle)
        return dpkt.pcap.Reader(handle)
    except (ValueError, dpkt.dpkt.Error) as error:
        raise CaptureError(
            f"{path}: not a pcap or pcapng file ({error}); "
            "write captures with tcpdump -w or tshark -w"
        ) from error


def _ip_layer(linktype: int, frame: bytes) -> Any:
    """Return the IP packet inside one captured frame, or None."""
    if linktype == dpkt.pcap.DLT_EN10MB:
        packet = dpkt.ethernet.Ethernet(frame).data
    elif linktype == dpkt.pcap.DLT_LINUX_SLL:
        packet = dpkt.sll.SLL(frame).data
    elif linktype == dpkt.pcap.DLT_LINUX_SLL2:
        packet = dpkt.sll2.SLL2(frame).data
    elif linktype in (dpkt.pcap.DLT_NULL, dpkt.pcap.DLT_LOOP):
        packet = dpkt.loopback.Loopback(frame).data
    elif linktype in (dpkt.pcap.DLT_RAW, 101, 228, 229):
        version = frame[0] >> 4 if frame else 0
        packet = dpkt.ip6.IP6(frame) if version == 6 else dpkt.ip.IP(frame)
    else:
        return None
    if isinstance(packet, dpkt.ip.IP | dpkt.ip6.IP6):
        return packet
    return None


def read_capture(
    path: Path, port: int | None = None, skipped: Counter[str] | None = None
) -> Iterator[Datagram]:
    """Yield the UDP payloads of a capture as export packets, in file order.

    Frames that carry no UDP (or whose destination port differs from ``port``)
    are counted in ``skipped`` by reason rather than raised.
    """
    skipped = skipped if skipped is not None else Counter()
    try:
        handle = path.open("rb")
    except OSError as error:
        raise CaptureError(f"cannot read {path}: {error.strerror}") from None
    with handle:
        reader = _reader(handle, path)
        linktype = reader.datalink()
        try:
            for timestamp, frame in reader:
                datagram = _datagram(linktype, float(timestamp), frame, skipped)
                if datagram is None:
                    continue
                if port is not None and datagram[1] != port:
                    skipped["other_port"] += 1
                    continue
                yield datagram[0]
        except (dpkt.dpkt.NeedData, dpkt.dpkt.UnpackError, ValueError):
            # dpkt stops at a cut-off last frame; what came before is kept.
            skipped["truncated_capture"] += 1


def _datagram(
    linktype: int, timestamp: float, frame: bytes, skipped: Counter[str]
) -> tuple[Datagram, int] | None:
    """Turn one frame into a datagram and its destination port, or None."""
    try:
        ip = _ip_layer(linktype, frame)
    except (dpkt.dpkt.UnpackError, ValueError, IndexError):
        skipped["bad_frame"] += 1
        return None
    if ip is None:
        skipped["not_ip"] += 1
        return None
    if isinstance(ip, dpkt.ip.IP) and (ip.mf or ip.offset):
        # TODO: IP fragments are not reassembled; real exporters keep export
        # packets under the path MTU, so this is counted rather than handled.
        skipped["ip_fragment"] += 1
        return None
    udp = ip.data
    if not isinstance(udp, dpkt.udp.UDP):
        skipped["not_udp"] += 1
        return None
    family = socket.AF_INET6 if isinstance(ip, dpkt.ip6.IP6) else socket.AF_INET
    exporter = socket.inet_ntop(family, ip.src)
    return Datagram(exporter, udp.sport, timestamp, bytes(udp.data)), udp.dport
