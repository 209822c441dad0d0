"""Reading captures: pcapng with several interfaces, cut-off frames."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import dpkt

from collector.capture import read_capture
from tests.conftest import EXPORTS


def _udp_ip(payload: bytes, src: bytes) -> dpkt.ip.IP:
    """An IPv4/UDP packet from src to 127.0.0.1:2055."""
    udp = dpkt.udp.UDP(sport=5000, dport=2055, data=payload)
    udp.ulen = len(udp)
    ip = dpkt.ip.IP(src=src, dst=b"\x7f\x00\x00\x01", p=dpkt.ip.IP_PROTO_UDP, data=udp)
    ip.len = len(ip)
    return ip


def test_pcapng_with_two_link_types_reads_every_frame(tmp_path: Path) -> None:
    """Raw-IP and Ethernet interfaces in one pcapng each use their own link type."""
    export = next(read_capture(EXPORTS / "softflowd-v9.pcap")).data
    raw = bytes(_udp_ip(export, b"\xc0\x00\x02\x01"))
    ether = bytes(
        dpkt.ethernet.Ethernet(
            src=b"\x02" * 6,
            dst=b"\x04" * 6,
            type=dpkt.ethernet.ETH_TYPE_IP,
            data=_udp_ip(export, b"\xc0\x00\x02\x02"),
        )
    )
    blocks = [
        dpkt.pcapng.SectionHeaderBlockLE(),
        dpkt.pcapng.InterfaceDescriptionBlockLE(linktype=101, snaplen=65535),
        dpkt.pcapng.InterfaceDescriptionBlockLE(linktype=1, snaplen=65535),
        dpkt.pcapng.EnhancedPacketBlockLE(
            iface_id=0, ts_high=0, ts_low=1_000_000, pkt_data=raw
        ),
        dpkt.pcapng.EnhancedPacketBlockLE(
            iface_id=1, ts_high=0, ts_low=2_000_000, pkt_data=ether
        ),
    ]
    capture = tmp_path / "two.pcapng"
    capture.write_bytes(b"".join(bytes(block) for block in blocks))
    skipped: Counter[str] = Counter()
    datagrams = list(read_capture(capture, skipped=skipped))
    assert [(d.exporter, d.received) for d in datagrams] == [
        ("192.0.2.1", 1.0),
        ("192.0.2.2", 2.0),
    ]
    assert not skipped


def test_frame_cut_short_is_skipped_not_decoded(tmp_path: Path) -> None:
    """A datagram shorter than its UDP length is counted, never fed on."""
    whole = (EXPORTS / "pmacctd-v9.pcap").read_bytes()
    capture = tmp_path / "cut.pcap"
    capture.write_bytes(whole[:700])
    skipped: Counter[str] = Counter()
    datagrams = list(read_capture(capture, skipped=skipped))
    assert all(len(d.data) > 0 for d in datagrams)
    assert skipped["truncated_frame"] + skipped["truncated_capture"] == 1
