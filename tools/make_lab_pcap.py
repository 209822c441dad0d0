"""Write the deterministic lab pcaps that the exporter fixtures are made from.

``lab.pcap`` holds conversations A to G (UDP/631 in every direction, a CUPS
browse broadcast, TCP/631, and ordinary DNS and HTTPS); ``lab-callback.pcap``
holds an external UDP/631 packet followed by the internal host calling back to
the URL it carried.  Every timestamp, MAC address, IP ID, sequence number and
payload is fixed, so each run writes identical bytes.

Each file's last packet falls on a whole second.  softflowd -a stamps its
export header with the last packet's time, and a NetFlow v9 header carries
whole seconds only; a fraction there would make every uptime-relative v9 time
come out early by that fraction.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dpkt

#: Capture clock of the first packet: 2026-01-15T10:00:00Z.
LAB_EPOCH = datetime(2026, 1, 15, 10, 0, 0, tzinfo=UTC).timestamp()

#: The router's MAC: every frame to or from an external address passes it.
GATEWAY_MAC = bytes.fromhex("020000000001")

#: Internal hosts by address; the IPv6 ULA is the same host as 10.1.0.5.
HOST_MACS: dict[str, bytes] = {
    "10.1.0.5": bytes.fromhex("020000010005"),
    "10.1.0.6": bytes.fromhex("020000010006"),
    "10.1.0.7": bytes.fromhex("020000010007"),
    "10.1.0.9": bytes.fromhex("020000010009"),
    "fd00:1::5": bytes.fromhex("020000010005"),
}

BROADCAST_MAC = b"\xff" * 6

TCP_FIN = dpkt.tcp.TH_FIN
TCP_SYN = dpkt.tcp.TH_SYN
TCP_PSH = dpkt.tcp.TH_PUSH
TCP_ACK = dpkt.tcp.TH_ACK


def _mac_for(address: str) -> bytes:
    """Return the MAC a frame to or from ``address`` carries on the lab segment."""
    if address in ("255.255.255.255", "10.1.0.255"):
        return BROADCAST_MAC
    # Anything that is not a known internal host sits beyond the router.
    return HOST_MACS.get(address, GATEWAY_MAC)


@dataclass
class LabCapture:
    """Collect Ethernet frames with their capture times and write them as a pcap."""

    frames: list[tuple[float, bytes]] = field(default_factory=list)
    _ip_ids: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def _next_ip_id(self, src: str) -> int:
        """Return the next IPv4 identification for ``src``, a fixed counter per host."""
        ip_id = self._ip_ids.get(src, 0x1000) + 1
        self._ip_ids[src] = ip_id
        return ip_id

    def _add_ip(self, at: float, src: str, dst: str, proto: int, l4: Any) -> None:
        """Wrap a UDP or TCP segment in IPv4 or IPv6 and Ethernet and record it."""
        is_v6 = ipaddress.ip_address(src).version == 6
        if is_v6:
            payload_len = len(l4)
            ip = dpkt.ip6.IP6(
                v=6,
                fc=0,
                flow=0,
                nxt=proto,
                hlim=64 if src in HOST_MACS else 52,
                src=socket.inet_pton(socket.AF_INET6, src),
                dst=socket.inet_pton(socket.AF_INET6, dst),
                plen=payload_len,
                data=l4,
            )
            eth_type = dpkt.ethernet.ETH_TYPE_IP6
        else:
            ip = dpkt.ip.IP(
                id=self._next_ip_id(src),
                ttl=64 if src in HOST_MACS else 52,
                p=proto,
                src=socket.inet_aton(src),
                dst=socket.inet_aton(dst),
                data=l4,
            )
            # DF on TCP as a Linux stack sends it; no exporter here looks at it.
            ip.df = 1 if proto == dpkt.ip.IP_PROTO_TCP else 0
            eth_type = dpkt.ethernet.ETH_TYPE_IP
        frame = dpkt.ethernet.Ethernet(
            dst=_mac_for(dst), src=_mac_for(src), type=eth_type, data=ip
        )
        self.frames.append((LAB_EPOCH + at, bytes(frame)))

    def udp(
        self, at: float, src: str, sport: int, dst: str, dport: int, payload: bytes
    ) -> None:
        """Record one UDP datagram sent ``at`` seconds after the lab epoch."""
        seg = dpkt.udp.UDP(sport=sport, dport=dport, ulen=8 + len(payload))
        seg.data = payload
        self._add_ip(at, src, dst, dpkt.ip.IP_PROTO_UDP, seg)

    def _tcp(
        self,
        at: float,
        src: str,
        sport: int,
        dst: str,
        dport: int,
        flags: int,
        seq: int,
        ack: int,
        payload: bytes = b"",
    ) -> None:
        """Record one TCP segment with the given flags and sequence numbers."""
        opts = b""
        if flags & TCP_SYN:
            # An MSS option, as every real SYN carries one.
            opts = b"\x02\x04\x05\xb4"
        seg = dpkt.tcp.TCP(
            sport=sport,
            dport=dport,
            seq=seq,
            ack=ack if flags & TCP_ACK else 0,
            flags=flags,
            win=64240,
            opts=opts,
        )
        seg.off = (20 + len(opts)) // 4
        seg.data = payload
        self._add_ip(at, src, dst, dpkt.ip.IP_PROTO_TCP, seg)

    def tcp_session(
        self,
        at: float,
        client: tuple[str, int],
        server: tuple[str, int],
        request: bytes,
        response: bytes,
    ) -> None:
        """Record a full TCP session: handshake, one exchange, FIN both ways.

        The client closes first; the packets spread over about two seconds so
        that an exporter sees a flow with distinct start and end times.
        """
        c_ip, c_port = client
        s_ip, s_port = server
        # Fixed initial sequence numbers keep the bytes identical on every run.
        c_seq, s_seq = 0x10000000, 0x20000000
        c2s = (c_ip, c_port, s_ip, s_port)
        s2c = (s_ip, s_port, c_ip, c_port)
        self._tcp(at, *c2s, TCP_SYN, c_seq, 0)
        self._tcp(at + 0.05, *s2c, TCP_SYN | TCP_ACK, s_seq, c_seq + 1)
        c_seq, s_seq = c_seq + 1, s_seq + 1
        self._tcp(at + 0.10, *c2s, TCP_ACK, c_seq, s_seq)
        self._tcp(at + 0.50, *c2s, TCP_PSH | TCP_ACK, c_seq, s_seq, request)
        c_seq += len(request)
        self._tcp(at + 0.55, *s2c, TCP_ACK, s_seq, c_seq)
        self._tcp(at + 0.90, *s2c, TCP_PSH | TCP_ACK, s_seq, c_seq, response)
        s_seq += len(response)
        self._tcp(at + 0.95, *c2s, TCP_ACK, c_seq, s_seq)
        self._tcp(at + 1.80, *c2s, TCP_FIN | TCP_ACK, c_seq, s_seq)
        c_seq += 1
        self._tcp(at + 1.85, *s2c, TCP_FIN | TCP_ACK, s_seq, c_seq)
        s_seq += 1
        self._tcp(at + 1.90, *c2s, TCP_ACK, c_seq, s_seq)

    def dns_lookup(
        self,
        at: float,
        client: tuple[str, int],
        server: str,
        name: str,
        answer: str,
        query_id: int,
    ) -> None:
        """Record an A query from ``client`` to ``server``:53 and its answer."""
        question = dpkt.dns.DNS.Q(name=name, type=dpkt.dns.DNS_A, cls=dpkt.dns.DNS_IN)
        query = dpkt.dns.DNS(id=query_id, op=dpkt.dns.DNS_RD, qd=[question])
        reply = dpkt.dns.DNS(
            id=query_id,
            op=dpkt.dns.DNS_RD | dpkt.dns.DNS_RA,
            qr=dpkt.dns.DNS_R,
            qd=[question],
            an=[
                dpkt.dns.DNS.RR(
                    name=name,
                    type=dpkt.dns.DNS_A,
                    cls=dpkt.dns.DNS_IN,
                    ttl=300,
                    rdata=socket.inet_aton(answer),
                )
            ],
        )
        c_ip, c_port = client
        self.udp(at, c_ip, c_port, server, 53, bytes(query))
        self.udp(at + 0.02, server, 53, c_ip, c_port, bytes(reply))

    def write(self, path: Path) -> None:
        """Write the recorded frames to ``path`` in capture-time order."""
        # A stable sort keeps frames that share a timestamp in recorded order.
        ordered = sorted(self.frames, key=lambda item: item[0])
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as fh:
            # Microsecond pcap (not nano): every exporter and decoder reads it.
            writer = dpkt.pcap.Writer(fh, snaplen=65535, linktype=dpkt.pcap.DLT_EN10MB)
            for ts, frame in ordered:
                writer.writepkt_time(frame, ts)


def _cups_browse(uri: str, location: str = "loc", info: str = "info") -> bytes:
    """Return a cups-browsed style browse packet advertising ``uri``."""
    return f'0 3 {uri} "{location}" "{info}"\n'.encode()


def _ipp_post(host: str, path: str, body: bytes) -> bytes:
    """Return a small HTTP POST with an IPP body, as a CUPS client sends it."""
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "Content-Type: application/ipp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


#: A minimal IPP Get-Printer-Attributes request: version 2.0, op 0x000b, id 1, end.
_IPP_GET_ATTRS = bytes.fromhex("0200000b0000000103")

_HTTP_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

#: Opaque TLS-looking records: the exporters never look past the TCP header.
_TLS_CLIENT = bytes.fromhex("1603010040") + bytes(range(64))
_TLS_SERVER = bytes.fromhex("1603030050") + bytes(range(80, 0, -1))


def lab_capture() -> LabCapture:
    """Build conversations A to G of ``lab.pcap`` in memory."""
    cap = LabCapture()
    # A: internal -> external UDP/631 over IPv4, three browse packets.
    browse_a = _cups_browse("http://203.0.113.10:631/printers/x")
    for i in range(3):
        cap.udp(0.0 + i, "10.1.0.5", 40001, "203.0.113.10", 631, browse_a)
    # B: internal ULA -> external UDP/631 over IPv6, two packets.
    browse_b = _cups_browse("http://[2001:db8:feed::10]:631/printers/x")
    for i in range(2):
        cap.udp(3.0 + 1.5 * i, "fd00:1::5", 40002, "2001:db8:feed::10", 631, browse_b)
    # C: internal -> internal UDP/631.
    browse_c = _cups_browse("http://10.1.0.6:631/printers/y")
    for i in range(2):
        cap.udp(6.0 + i, "10.1.0.5", 40003, "10.1.0.6", 631, browse_c)
    # D: CUPS browse broadcasts 631 -> 631, subnet and limited broadcast.
    browse_d = _cups_browse("ipp://10.1.0.7:631/printers/lab", "office", "Lab")
    for i in range(2):
        cap.udp(8.0 + 2 * i, "10.1.0.7", 631, "10.1.0.255", 631, browse_d)
        cap.udp(8.001 + 2 * i, "10.1.0.7", 631, "255.255.255.255", 631, browse_d)
    # E: external -> internal UDP/631.
    browse_e = _cups_browse("http://198.51.100.20:631/printers/z")
    for i in range(2):
        cap.udp(12.0 + i, "198.51.100.20", 40004, "10.1.0.5", 631, browse_e)
    # F: internal -> external TCP/631, an IPP request over HTTP.
    cap.tcp_session(
        15.0,
        ("10.1.0.5", 40100),
        ("203.0.113.11", 631),
        _ipp_post("203.0.113.11:631", "/printers/x", _IPP_GET_ATTRS),
        _HTTP_OK,
    )
    # G: ordinary traffic that no detector should flag: DNS and then HTTPS.
    cap.dns_lookup(
        20.0, ("10.1.0.5", 53001), "192.0.2.53", "www.example.com", "203.0.113.80", 7
    )
    # Ends at +23 s exactly: the last packet sits on a whole second (see top).
    cap.tcp_session(
        21.1, ("10.1.0.5", 40200), ("203.0.113.80", 443), _TLS_CLIENT, _TLS_SERVER
    )
    return cap


def callback_capture() -> LabCapture:
    """Build the conversations of ``lab-callback.pcap`` in memory."""
    cap = LabCapture()
    # An external host advertises a printer whose URL points back at itself.
    evil = _cups_browse("http://198.51.100.66:8631/printers/evil", "x", "y")
    cap.udp(0.0, "198.51.100.66", 40010, "10.1.0.9", 631, evil)
    # Two seconds later the internal host fetches that URL.
    cap.tcp_session(
        2.0,
        ("10.1.0.9", 41000),
        ("198.51.100.66", 8631),
        _ipp_post("198.51.100.66:8631", "/printers/evil", _IPP_GET_ATTRS),
        _HTTP_OK,
    )
    # Unrelated background traffic; its reply, the last packet, lands on +5 s.
    cap.dns_lookup(
        4.98, ("10.1.0.9", 53002), "192.0.2.53", "updates.example.net", "192.0.2.80", 9
    )
    return cap


def write_lab_pcap(path: Path) -> None:
    """Write ``lab.pcap`` (conversations A to G) to ``path``."""
    lab_capture().write(path)


def write_callback_pcap(path: Path) -> None:
    """Write ``lab-callback.pcap`` (UDP/631 in, then the callback) to ``path``."""
    callback_capture().write(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Write ``lab.pcap`` and ``lab-callback.pcap`` into the directory given."""
    parser = argparse.ArgumentParser(
        description="Write lab.pcap and lab-callback.pcap."
    )
    parser.add_argument("outdir", type=Path, help="directory to write the pcaps into")
    args = parser.parse_args(argv)
    outdir: Path = args.outdir
    write_lab_pcap(outdir / "lab.pcap")
    write_callback_pcap(outdir / "lab-callback.pcap")
    print(f"wrote {outdir / 'lab.pcap'} and {outdir / 'lab-callback.pcap'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
