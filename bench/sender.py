"""The paced sender: export packets to one collector on 127.0.0.1 at a fixed rate.

Run as its own process (``python -m bench.sender POOL``), pinned to one core
where the machine allows, so that sending never competes with the collector in
the same interpreter. The pool file (written by ``bench.live``) names the port,
the rate, how long to send, and each exporter's source address, template packets
and data packets. The sender patches each packet's sequence number so that the
collector sees an unbroken stream, sends for the given time at most, and prints
what it sent as one JSON line.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Where each version keeps its sequence number, and what it counts (RFC 3954
# §5.1: export packets; RFC 7011 §3.1: data records; v5: flow records).
_SEQUENCE_OFFSET = {5: 16, 9: 12, 10: 8}
_U32 = struct.Struct(">I")
# How long the collector gets to learn the templates before data flows.
TEMPLATE_PAUSE = 0.3
# The sender sleeps when ahead of schedule; bursts never exceed this many packets.
MAX_BURST = 256


@dataclass(slots=True)
class Exporter:
    """One exporter: its source address, templates and data packets."""

    source: str
    version: int
    templates: list[bytes]
    # (bytes, records, packets, findings) per data packet.
    packets: list[tuple[bytes, int, int, int]]


@dataclass(slots=True)
class Plan:
    """What to send, where, how fast and for how long."""

    port: int
    rate: float
    seconds: float
    exporters: list[Exporter]
    cpu: int | None = None
    # Data packets to send; 0 means rate x seconds.
    count: int = 0
    # Several collectors (a cluster's nodes): exporter i sends to ports[i % n].
    ports: list[int] | None = None


@dataclass(slots=True)
class Sent:
    """What the sender put on the wire."""

    datagrams: int = 0
    records: int = 0
    packets: int = 0
    findings: int = 0
    seconds: float = 0.0


def write_plan(plan: Plan, path: Path) -> None:
    """Store a plan for the sender process."""
    path.write_bytes(pickle.dumps(plan))


def _sockets(exporters: list[Exporter]) -> list[socket.socket]:
    """Open one socket per exporter, bound to its loopback source address."""
    sockets = []
    for exporter in exporters:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        sock.bind((exporter.source, 0))
        sockets.append(sock)
    return sockets


def send(plan: Plan) -> Sent:
    """Send the templates, then data packets paced at the plan's rate."""
    ports = plan.ports or [plan.port]
    targets = [("127.0.0.1", ports[i % len(ports)]) for i in range(len(plan.exporters))]
    sockets = _sockets(plan.exporters)
    for sock, exporter, target in zip(sockets, plan.exporters, targets, strict=True):
        for template in exporter.templates:
            sock.sendto(template, target)
    time.sleep(TEMPLATE_PAUSE)

    # Round-robin over exporters; each keeps its own sequence counter.
    rounds = [
        (sock, exporter, [bytearray(p[0]) for p in exporter.packets], target)
        for sock, exporter, target in zip(sockets, plan.exporters, targets, strict=True)
    ]
    sequences = [0] * len(rounds)
    total = plan.count or int(plan.rate * plan.seconds)
    deadline = plan.seconds * 2 + 5.0
    sent = Sent()
    start = time.perf_counter()
    index = 0
    while sent.datagrams < total:
        elapsed = time.perf_counter() - start
        if elapsed > deadline:
            break
        due = min(total, int(elapsed * plan.rate) + 1, sent.datagrams + MAX_BURST)
        if due <= sent.datagrams:
            time.sleep(0.0002)
            continue
        while sent.datagrams < due:
            slot = index % len(rounds)
            sock, exporter, buffers, target = rounds[slot]
            position = (index // len(rounds)) % len(buffers)
            buffer = buffers[position]
            _, records, packets, findings = exporter.packets[position]
            offset = _SEQUENCE_OFFSET[exporter.version]
            _U32.pack_into(buffer, offset, sequences[slot] & 0xFFFFFFFF)
            sequences[slot] += 1 if exporter.version == 9 else records
            sock.sendto(buffer, target)
            sent.datagrams += 1
            sent.records += records
            sent.packets += packets
            sent.findings += findings
            index += 1
    sent.seconds = time.perf_counter() - start
    for sock in sockets:
        sock.close()
    return sent


def main(argv: list[str]) -> int:
    """Load a plan, pin to its core, send, print what was sent as JSON."""
    plan: Plan = pickle.loads(Path(argv[0]).read_bytes())
    if plan.cpu is not None and plan.cpu in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {plan.cpu})
    sent = send(plan)
    print(json.dumps(asdict(sent)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
