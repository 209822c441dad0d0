"""Memory: ``flowtrap run`` with many exporters, templates, and held data at its caps.

Each exporter sends from its own loopback address (127.1.0.0/16) one export
packet defining five templates, then data flowsets for templates it never
defines, so that flowtrap holds them until the held-data caps (per exporter and
in total) are reached. The collector's resident set is read from /proc once it
has read everything, and again at its peak.
"""

from __future__ import annotations

import re
import socket
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from bench.collectors import Flowtrap
from bench.live import wait_drained
from bench.packets import Clock, Mix, data_packets, template_packet
from bench.profiles import Profile

TEMPLATES_PER_EXPORTER = 5
# Held flowsets sent per exporter: 10,000 x 3 x ~1.4 kB is past the 32 MiB total.
HELD_PER_EXPORTER = 3
# Template ids the memory exporters define, and the ones they never define.
FIRST_TEMPLATE_ID = 256
UNKNOWN_TEMPLATE_ID = 4000
# Datagrams per second; template learning is the slow part here.
SEND_RATE = 4000.0


@dataclass(slots=True)
class MemoryResult:
    """What the memory scenario measured."""

    exporters: int
    templates: int
    held_sent: int
    datagrams_sent: int
    datagrams_received: int | None
    idle_rss_mb: float
    rss_mb: float
    peak_rss_mb: float
    held_capped: bool
    seconds: float


def rss_mb(pid: int) -> tuple[float, float]:
    """Return (VmRSS, VmHWM) of a process in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    values = {}
    for key in ("VmRSS", "VmHWM"):
        match = re.search(rf"^{key}:\s+(\d+) kB", status, re.MULTILINE)
        values[key] = int(match.group(1)) / 1024 if match else 0.0
    return values["VmRSS"], values["VmHWM"]


def _template_packet(profiles: list[Profile], clock: Clock) -> bytes:
    """Return one v9 export packet defining every profile's template."""
    packet = b""
    for index, profile in enumerate(profiles):
        own = replace(profile, template_id=FIRST_TEMPLATE_ID + index)
        whole = template_packet(own, clock)
        # Keep the first header; append each template flowset after it.
        packet = whole if not packet else packet + whole[20:]
    return packet


def _source(index: int) -> str:
    """Return the loopback address of exporter number index."""
    return f"127.1.{index // 250}.{index % 250 + 1}"


def run(profiles: list[Profile], exporters: int, cpu: str | None) -> MemoryResult:
    """Start flowtrap, send every exporter's templates and held data, read RSS."""
    v9 = [profile for profile in profiles if profile.version == 9]
    # Five distinct layouts where the captures give them; repeats otherwise.
    chosen = [v9[index % len(v9)] for index in range(TEMPLATES_PER_EXPORTER)]
    clock = Clock(int(time.time()), 3_600_000)
    templates = _template_packet(chosen, clock)
    unknown = replace(chosen[0], template_id=UNKNOWN_TEMPLATE_ID)
    held = [p.data for p in data_packets(unknown, Mix(), clock, HELD_PER_EXPORTER, 1)]

    collector = Flowtrap(cpu, backlog_bytes=None)
    with tempfile.TemporaryDirectory(prefix="flowtrap-bench-") as name:
        port = collector.start(Path(name))
        time.sleep(0.5)
        idle, _ = rss_mb(collector.pid)
        start = time.monotonic()
        sent = _send(port, exporters, [templates, *held])
        wait_drained(port)
        current, peak = rss_mb(collector.pid)
        seconds = time.monotonic() - start
        log_path = collector.log
        stored = collector.stop()
        log = log_path.read_text(errors="replace")
    return MemoryResult(
        exporters=exporters,
        templates=exporters * len(chosen),
        held_sent=exporters * len(held),
        datagrams_sent=sent,
        datagrams_received=stored.datagrams,
        idle_rss_mb=idle,
        rss_mb=current,
        peak_rss_mb=peak,
        held_capped="held_dropped_cap" in log,
        seconds=seconds,
    )


def _send(port: int, exporters: int, packets: list[bytes]) -> int:
    """Send each exporter's packets from its own address, paced; return the count."""
    sent = 0
    start = time.perf_counter()
    for index in range(exporters):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((_source(index), 0))
            for packet in packets:
                sock.sendto(packet, ("127.0.0.1", port))
                sent += 1
        ahead = sent / SEND_RATE - (time.perf_counter() - start)
        if ahead > 0:
            time.sleep(ahead)
    return sent
