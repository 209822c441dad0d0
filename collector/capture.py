"""Reading export packets out of pcap and pcapng captures with dpkt.

Every UDP payload in the capture is taken as one export packet from that
datagram's IP source address, stamped with the capture's own clock, so a replay of
the same file always sees the same times.
"""

from __future__ import annotations

import socket
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import dpkt

# How often (in frames) a replay's progress callback hears the file offset.
PROGRESS_FRAMES = 4096


@dataclass(frozen=True, slots=True)
class Datagram:
    """One received export packet: who sent it, when, and its bytes."""

    exporter: str
    port: int
    received: float
    data: bytes


class CaptureError(Exception):
    """A capture file that cannot be read at all."""


def _frames(handle: BinaryIO, path: Path) -> Iterator[tuple[float, int, bytes]]:
    """Yield (timestamp, link type, frame) from a pcap or pcapng file."""
    magic = handle.read(4)
    handle.seek(0)
    if magic == _PCAPNG_MAGIC:
        return _pcapng_frames(handle, path)
    try:
        reader = dpkt.pcap.Reader(handle)
    except (ValueError, dpkt.dpkt.Error) as error:
        raise CaptureError(
            f"{path}: not a pcap or pcapng file ({error or 'bad header'}); "
            "write captures with tcpdump -w or tshark -w"
        ) from error
    linktype = reader.datalink()
    return ((float(ts), linktype, frame) for ts, frame in reader)


_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_PCAPNG_IDB = 1
_PCAPNG_EPB = 6
_TSRESOL_OPTION = 9


def _pcapng_frames(handle: BinaryIO, path: Path) -> Iterator[tuple[float, int, bytes]]:
    """Walk pcapng blocks, giving each packet its own interface's link type.

    dpkt's pcapng reader applies the first interface's link type and clock
    resolution to every packet; a capture taken on several interfaces (tshark
    -i a -i b) mixes link types, so the blocks are walked here with dpkt's own
    block parsers, keeping one (link type, resolution) per interface.
    """
    interfaces: list[tuple[int, float]] = []
    order = ">"
    while True:
        head = handle.read(12)
        if len(head) < 8:
            return
        if head[:4] == _PCAPNG_MAGIC:
            if len(head) < 12:
                raise CaptureError(f"{path}: pcapng section header cut short")
            # Each section declares its byte order and starts a new interface list.
            order = "<" if head[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
            interfaces = []
        block_type, length = struct.unpack(order + "II", head[:8])
        if length < 12 or length % 4:
            raise CaptureError(f"{path}: pcapng block of bad length {length}")
        body = head + handle.read(length - 12)
        if len(body) < length:
            raise CaptureError(f"{path}: pcapng file cut short in a block")
        little = order == "<"
        if block_type == _PCAPNG_IDB:
            block = (
                dpkt.pcapng.InterfaceDescriptionBlockLE(body)
                if little
                else dpkt.pcapng.InterfaceDescriptionBlock(body)
            )
            interfaces.append((block.linktype, _resolution(block)))
        elif block_type == _PCAPNG_EPB:
            packet = (
                dpkt.pcapng.EnhancedPacketBlockLE(body)
                if little
                else dpkt.pcapng.EnhancedPacketBlock(body)
            )
            if packet.iface_id >= len(interfaces):
                continue
            linktype, resolution = interfaces[packet.iface_id]
            ticks = (packet.ts_high << 32) | packet.ts_low
            yield ticks * resolution, linktype, packet.pkt_data


def _resolution(block: Any) -> float:
    """Return an interface's clock resolution in seconds (if_tsresol, default µs)."""
    for option in getattr(block, "opts", []):
        if option.code == _TSRESOL_OPTION and option.data:
            value = option.data[0]
            return float(2.0 ** -(value & 0x7F) if value & 0x80 else 10.0**-value)
    return 1e-6


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
    path: Path,
    port: int | None = None,
    skipped: Counter[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[Datagram]:
    """Yield the UDP payloads of a capture as export packets, in file order.

    Frames that carry no UDP (or whose destination port differs from ``port``)
    are counted in ``skipped`` by reason rather than raised. ``progress``, if
    given, is told the file offset reached every few thousand frames.
    """
    skipped = skipped if skipped is not None else Counter()
    try:
        handle = path.open("rb")
    except OSError as error:
        raise CaptureError(f"cannot read {path}: {error.strerror}") from None
    with handle:
        try:
            for count, (timestamp, linktype, frame) in enumerate(_frames(handle, path)):
                if progress is not None and count % PROGRESS_FRAMES == 0:
                    progress(handle.tell())
                datagram = _datagram(linktype, timestamp, frame, skipped)
                if datagram is None:
                    continue
                if port is not None and datagram[1] != port:
                    skipped["other_port"] += 1
                    continue
                yield datagram[0]
        except (dpkt.dpkt.NeedData, dpkt.dpkt.UnpackError, ValueError):
            # dpkt stops at a cut-off last frame; what came before is kept.
            skipped["truncated_capture"] += 1
        if progress is not None:
            progress(handle.tell())


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
    if udp.ulen > len(udp.data) + 8:
        # Cut by the snap length or a truncated file: not a whole export packet.
        skipped["truncated_frame"] += 1
        return None
    family = socket.AF_INET6 if isinstance(ip, dpkt.ip6.IP6) else socket.AF_INET
    exporter = socket.inet_ntop(family, ip.src)
    return Datagram(exporter, udp.sport, timestamp, bytes(udp.data)), udp.dport
