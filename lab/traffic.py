"""The lab's traffic: a workstation and an outside host, standard library only.

Both labs run this one script: the docker-compose lab in its containers, and
``make lab`` inside Linux network namespaces.

``workstation`` plays an internal host with a vulnerable cups-browsed.  Each
round it sends ordinary traffic to the outside host (a DNS query on UDP/53, a
TLS-looking exchange on TCP/443) and three cups-browsed browse packets to the
outside host's UDP/631, the egress that ``cups_browsed_internal_external``
flags.  It then waits on its own UDP/631 for a probe and, as cups-browsed does
(CVE-2024-47176), fetches the printer URL the probe advertises over TCP.  Each
round ends with background traffic, which no real workstation's network is
without: a bounded burst of datagrams to the outside host's discard service
(UDP/9, RFC 863).  It is there for softflowd 1.1.0, which processes captured
packets only in full 256 KiB blocks (see BACKGROUND_DATAGRAMS).

``outside`` plays the external host: it answers the DNS query and the TCP/443
exchange, takes the browse packets and the discard datagrams, and answers a
host's browse packets by probing that host's UDP/631 with a printer URL that
points back at its own TCP/8631, where it answers the callback's IPP request.

Nothing is sent anywhere but the addresses given on the command line: the
outside host probes only hosts that sent it browse packets, and the
workstation calls back only to the address the probe came from.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from urllib.parse import urlsplit

log = logging.getLogger("lab.traffic")

DISCARD_PORT = 9
DNS_PORT = 53
TLS_PORT = 443
CUPS_PORT = 631
CALLBACK_PORT = 8631

#: Browse packets the workstation sends to the outside host's UDP/631 per round.
BROWSE_PACKETS = 3

#: Datagrams of background traffic the workstation sends at the end of a round.
#: softflowd 1.1.0 captures without libpcap's immediate mode, so the kernel hands
#: its packets over only when a 256 KiB ring block is full, never on a timer.  A
#: datagram longer than softflowd's snaplen takes 247 bytes of a block (what the
#: snaplen keeps plus the ring's header), so 1,062 captured packets fill one
#: from empty (measured; small ones take less room: about 1,800 of 16 bytes).
#: With a round's 49 packets in the block first, 1,000 datagrams were too few
#: and 1,050 enough; 1,200 leave a margin.  The round's flows are processed as
#: soon as the burst has passed, and exported after softflowd's timeouts.
BACKGROUND_DATAGRAMS = 1200

#: Payload bytes per background datagram: more than softflowd's snaplen keeps,
#: so each takes the most room in a block, yet the burst stays about 350 kB.
BACKGROUND_SIZE = 256

#: The burst goes out in slices this big with a short pause after each, so it
#: takes about a tenth of a second and overruns no queue on the way.
BACKGROUND_SLICE = 100
BACKGROUND_PAUSE = 0.01

#: Seconds between the ordinary traffic and the browse packets of a round.
ORDINARY_GAP = 1.0

#: The outside host probes one host at most this often, in seconds.
PROBE_GAP = 10.0

#: Seconds any single exchange may take before it counts as failed.
IO_TIMEOUT = 5.0

#: The name the workstation looks up, and the address the outside host answers.
QUERY_NAME = "printers.example.com"
ANSWER_ADDRESS = "203.0.113.80"

#: Opaque TLS-looking records: no exporter looks past the TCP header.
TLS_CLIENT = bytes.fromhex("1603010040") + bytes(range(64))
TLS_SERVER = bytes.fromhex("1603030050") + bytes(range(80, 0, -1))

#: A minimal IPP Get-Printer-Attributes request: version 2.0, op 0x000b, id 1, end.
IPP_GET_ATTRIBUTES = bytes.fromhex("0200000b0000000103")

HTTP_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def browse_packet(uri: str, location: str = "lab", info: str = "Lab printer") -> bytes:
    """Return a cups-browsed browse packet advertising the printer at ``uri``."""
    # type 0x0 (printer), state 0x3 (idle), then the URI, location and info.
    return f'0 3 {uri} "{location}" "{info}"\n'.encode()


def printer_url(packet: bytes) -> tuple[str, int, str] | None:
    """Return (host, port, path) of the URI a browse packet advertises, if any."""
    parts = packet.decode("ascii", "replace").split()
    if len(parts) < 3:
        return None
    url = urlsplit(parts[2])
    if url.scheme not in ("http", "ipp") or url.hostname is None:
        return None
    try:
        port = url.port or (CUPS_PORT if url.scheme == "ipp" else 80)
    except ValueError:
        return None
    return url.hostname, port, url.path or "/"


def dns_query(query_id: int, name: str) -> bytes:
    """Return a recursive A query for ``name`` (RFC 1035 §4.1)."""
    header = struct.pack(">HHHHHH", query_id, 0x0100, 1, 0, 0, 0)
    return header + _qname(name) + struct.pack(">HH", 1, 1)


def dns_answer(query: bytes, address: str) -> bytes | None:
    """Return the answer to an A query: its question and one A record."""
    if len(query) < 12:
        return None
    end = 12
    while end < len(query) and query[end] != 0:
        end += 1 + query[end]
    question = query[12 : end + 5]
    if len(question) != end + 5 - 12:
        return None
    (query_id,) = struct.unpack_from(">H", query)
    header = struct.pack(">HHHHHH", query_id, 0x8180, 1, 1, 0, 0)
    # A pointer (0xc00c) to the name in the question, type A, class IN, TTL 300.
    record = struct.pack(">HHHIH", 0xC00C, 1, 1, 300, 4)
    return header + question + record + socket.inet_aton(address)


def _qname(name: str) -> bytes:
    """Encode a domain name as length-prefixed labels."""
    labels = [label.encode() for label in name.split(".") if label]
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\0"


def ipp_post(host: str, port: int, path: str) -> bytes:
    """Return the HTTP POST with an IPP body that cups-browsed sends a printer."""
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Content-Type: application/ipp\r\n"
        "User-Agent: CUPS/2.4 (flowtrap lab)\r\n"
        f"Content-Length: {len(IPP_GET_ATTRIBUTES)}\r\n\r\n"
    )
    return head.encode() + IPP_GET_ATTRIBUTES


def read_request(conn: socket.socket) -> bytes:
    """Read an HTTP request (headers and Content-Length body) or whatever comes."""
    data = b""
    while True:
        chunk = conn.recv(4096)
        if not chunk:
            return data
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep:
            if not data.startswith(b"POST") and not data.startswith(b"GET"):
                return data
            continue
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length" and value.strip().isdigit():
                length = int(value)
        if len(body) >= length:
            return data


def exchange(
    source: str, destination: tuple[str, int], request: bytes, timeout: float
) -> bytes:
    """Open a TCP connection, send ``request``, and read the reply until close."""
    with socket.create_connection(
        destination, timeout=timeout, source_address=(source, 0)
    ) as conn:
        conn.sendall(request)
        conn.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := conn.recv(4096):
            reply += chunk
    return reply


@dataclass(frozen=True)
class WorkstationSettings:
    """What the workstation role is told on the command line."""

    address: str
    outside: str
    rounds: int
    interval: float
    probe_wait: float
    delay: float = 0.0
    background: int = BACKGROUND_DATAGRAMS


def workstation(settings: WorkstationSettings, stopping: threading.Event) -> int:
    """Run the workstation's rounds; return 0 when the last round went as planned."""
    # Bind UDP/631 before sending anything, so a probe that answers the first
    # browse packet always finds cups-browsed listening.
    cups = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cups.bind((settings.address, CUPS_PORT))
    log.info("workstation %s listening on udp/%d", settings.address, CUPS_PORT)
    failed: list[str] = []
    done = 0
    try:
        if stopping.wait(settings.delay):
            return 0
        while settings.rounds == 0 or done < settings.rounds:
            if done and stopping.wait(settings.interval):
                break
            done += 1
            failed = _round(settings, cups, done)
            if failed:
                log.warning("round %d failed: %s", done, "; ".join(failed))
            else:
                log.info("round %d done", done)
    finally:
        cups.close()
    return 1 if failed else 0


def _round(
    settings: WorkstationSettings, cups: socket.socket, number: int
) -> list[str]:
    """Play one round, then its background burst; return what failed."""
    failed = _exchanges(settings, cups, number)
    if settings.background:
        try:
            port = background(settings.address, settings.outside, settings.background)
            log.info(
                "background udp %s:%d -> %s:%d x%d",
                settings.address,
                port,
                settings.outside,
                DISCARD_PORT,
                settings.background,
            )
        except OSError as error:
            failed.append(f"background: {error}")
    return failed


def background(source: str, outside: str, count: int) -> int:
    """Send ``count`` datagrams to the outside host's discard service.

    They come from one socket, so they are one flow; return its source port.
    """
    payload = bytes(BACKGROUND_SIZE)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        for sent in range(count):
            sock.sendto(payload, (outside, DISCARD_PORT))
            if (sent + 1) % BACKGROUND_SLICE == 0:
                time.sleep(BACKGROUND_PAUSE)
        port: int = sock.getsockname()[1]
    return port


def _exchanges(
    settings: WorkstationSettings, cups: socket.socket, number: int
) -> list[str]:
    """Send one round of traffic and answer the probe; return what failed."""
    failed: list[str] = []
    me, outside = settings.address, settings.outside

    # Ordinary traffic first: a DNS lookup, then a TLS-looking exchange.
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dns:
            dns.bind((me, 0))
            dns.settimeout(IO_TIMEOUT)
            dns.sendto(dns_query(number, QUERY_NAME), (outside, DNS_PORT))
            reply, _ = dns.recvfrom(512)
        log.info(
            "dns %s -> %s:%d answered (%d bytes)", me, outside, DNS_PORT, len(reply)
        )
    except OSError as error:
        failed.append(f"dns: {error}")
    try:
        reply = exchange(me, (outside, TLS_PORT), TLS_CLIENT, IO_TIMEOUT)
        log.info(
            "tcp %s -> %s:%d answered (%d bytes)", me, outside, TLS_PORT, len(reply)
        )
    except OSError as error:
        failed.append(f"tcp/{TLS_PORT}: {error}")

    # The egress: browse packets to an external host's UDP/631, a moment
    # after the ordinary traffic so that the two stand apart in flow times.
    time.sleep(ORDINARY_GAP)
    packet = browse_packet(f"ipp://{me}:{CUPS_PORT}/printers/office")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as browse:
        browse.bind((me, 0))
        for _ in range(BROWSE_PACKETS):
            browse.sendto(packet, (outside, CUPS_PORT))
            time.sleep(0.2)
        port = browse.getsockname()[1]
    log.info("udp %s:%d -> %s:%d x%d", me, port, outside, CUPS_PORT, BROWSE_PACKETS)

    # The probe, and the callback cups-browsed makes to the URL it carries.
    cups.settimeout(settings.probe_wait)
    try:
        probe, (sender, _) = cups.recvfrom(2048)
    except TimeoutError:
        failed.append(f"no probe on udp/{CUPS_PORT} in {settings.probe_wait:g} s")
        return failed
    target = printer_url(probe)
    if target is None or target[0] != sender:
        failed.append(f"probe from {sender} does not point back at it: {probe!r}")
        return failed
    host, port, path = target
    log.info("probe from %s advertises http://%s:%d%s", sender, host, port, path)
    try:
        reply = exchange(me, (host, port), ipp_post(host, port, path), IO_TIMEOUT)
        log.info("callback %s -> %s:%d answered %r", me, host, port, reply[:15])
    except OSError as error:
        failed.append(f"callback to {host}:{port}: {error}")
    return failed


@dataclass
class Outside:
    """The outside host's sockets and what it has seen."""

    address: str
    probe_gap: float
    sockets: dict[int, socket.socket] = field(default_factory=dict)
    last_probe: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def open(self) -> None:
        """Bind every service the outside host offers, keyed by port."""
        for port, kind in (
            (DISCARD_PORT, socket.SOCK_DGRAM),
            (DNS_PORT, socket.SOCK_DGRAM),
            (CUPS_PORT, socket.SOCK_DGRAM),
            (TLS_PORT, socket.SOCK_STREAM),
            (CALLBACK_PORT, socket.SOCK_STREAM),
        ):
            sock = socket.socket(socket.AF_INET, kind)
            self.sockets[port] = sock
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.address, port))
            if kind == socket.SOCK_STREAM:
                sock.listen(8)

    def close(self) -> None:
        """Close every socket."""
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()

    def serve(self, stopping: threading.Event) -> None:
        """Answer whatever arrives until told to stop."""
        with selectors.DefaultSelector() as selector:
            for port, sock in self.sockets.items():
                selector.register(sock, selectors.EVENT_READ, port)
            while not stopping.is_set():
                for key, _ in selector.select(timeout=0.5):
                    port = key.data
                    try:
                        self._handle(self.sockets[port], port)
                    except OSError as error:
                        log.warning("port %d: %s", port, error)

    def _count(self, what: str) -> None:
        """Count one thing seen."""
        self.counts[what] = self.counts.get(what, 0) + 1

    def _handle(self, sock: socket.socket, port: int) -> None:
        """Serve one datagram or one connection on ``port``."""
        if port == DISCARD_PORT:
            self._discard(sock)
        elif port == DNS_PORT:
            query, peer = sock.recvfrom(512)
            answer = dns_answer(query, ANSWER_ADDRESS)
            if answer is not None:
                sock.sendto(answer, peer)
                self._count("dns")
        elif port == CUPS_PORT:
            _, (host, _) = sock.recvfrom(2048)
            self._count("browse")
            self._probe(sock, host)
        else:
            conn, (host, _) = sock.accept()
            with conn:
                conn.settimeout(IO_TIMEOUT)
                request = read_request(conn)
                conn.sendall(HTTP_OK if port == CALLBACK_PORT else TLS_SERVER)
            if port == CALLBACK_PORT:
                self._count("callback")
                log.info("callback from %s: %r", host, request.split(b"\r\n")[0])
            else:
                self._count("tls")

    def _discard(self, sock: socket.socket) -> None:
        """Read and drop every datagram waiting on the discard service."""
        while True:
            try:
                sock.recv(2048, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            self._count("discard")

    def _probe(self, cups: socket.socket, host: str) -> None:
        """Probe a host that sent browse packets, at most once per probe gap."""
        now = time.monotonic()
        if now - self.last_probe.get(host, -self.probe_gap) < self.probe_gap:
            return
        self.last_probe[host] = now
        url = f"http://{self.address}:{CALLBACK_PORT}/printers/lab"
        # From UDP/631, as a cups-browsed peer sends its browse packets.
        cups.sendto(browse_packet(url, "Office HQ", "Printer"), (host, CUPS_PORT))
        self._count("probe")
        log.info(
            "probe %s:%d -> %s:%d advertises %s",
            self.address,
            CUPS_PORT,
            host,
            CUPS_PORT,
            url,
        )


def _address(text: str) -> str:
    """Accept an IPv4 address only: the lab is IPv4."""
    return str(ipaddress.IPv4Address(text))


def _parser() -> argparse.ArgumentParser:
    """Build the argument parser."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    roles = parser.add_subparsers(dest="role", required=True)

    ws = roles.add_parser("workstation", help="the internal host")
    ws.add_argument("--address", type=_address, required=True, help="own address")
    ws.add_argument("--outside", type=_address, required=True, help="outside host")
    ws.add_argument("--rounds", type=int, default=1, help="0 repeats until stopped")
    ws.add_argument("--interval", type=float, default=20.0, help="seconds between")
    ws.add_argument("--probe-wait", type=float, default=IO_TIMEOUT)
    ws.add_argument("--delay", type=float, default=0.0, help="seconds before the first")
    ws.add_argument(
        "--background",
        type=int,
        default=BACKGROUND_DATAGRAMS,
        help="discard datagrams at the end of each round (0: none)",
    )

    out = roles.add_parser("outside", help="the external host")
    out.add_argument("--address", type=_address, required=True, help="own address")
    out.add_argument("--probe-gap", type=float, default=PROBE_GAP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Play one role until done (workstation) or until SIGTERM/SIGINT (outside)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    if args.role == "workstation":
        settings = WorkstationSettings(
            address=args.address,
            outside=args.outside,
            rounds=args.rounds,
            interval=args.interval,
            probe_wait=args.probe_wait,
            delay=args.delay,
            background=args.background,
        )
        return workstation(settings, stopping)

    outside = Outside(args.address, args.probe_gap)
    outside.open()
    log.info("outside %s ready", args.address)
    try:
        outside.serve(stopping)
    finally:
        outside.close()
        log.info("outside stopped: %s", outside.counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
