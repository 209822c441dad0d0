"""The live sweep: the same paced traffic to flowtrap, nfcapd and nfacctd in turn.

At each rate of a rising ladder every collector still in the race gets a fresh
process, the sender (its own process, on its own core) sends the same export
packets for the same time, and loss is what the collector stored against what
was sent. A collector leaves the race at the first rate it loses 0.1 % or more
(checked twice, so one noisy step does not end it); its result is the highest
rate it held. Kernel drops on its socket and the host's UDP error counters are
read beside it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.collectors import ROOT, Collector, CollectorError, Flowtrap, udp_socket_row
from bench.packets import Clock, Mix, Packet, data_packets, template_packet
from bench.profiles import Profile
from bench.sender import Exporter, Plan, write_plan

# Loss at or above this share of records means the rate was not held.
LOSS_LIMIT = 0.001
# Data packets in each exporter's pool; the sender cycles through them.
POOL_PACKETS = 64
# After sending, how long a collector may take to empty its socket.
DRAIN_TIMEOUT = 20.0


@dataclass(slots=True)
class Step:
    """One collector at one rate."""

    collector: str
    rate: float
    sent_rate: float
    sent_records: int
    stored: int
    loss: float
    socket_drops: int
    host_drops: int
    error: str = ""

    @property
    def held(self) -> bool:
        """Return True when the loss stayed under the limit."""
        return not self.error and self.loss < LOSS_LIMIT


@dataclass(slots=True)
class Sweep:
    """Every step of one sweep, and the highest rate each collector held."""

    version: int
    records_per_datagram: float = 0.0
    # What the flow records carry, for the report.
    traffic: str = "1 % findings"
    steps: list[Step] = field(default_factory=list)
    held: dict[str, float] = field(default_factory=dict)
    note: dict[str, str] = field(default_factory=dict)


def host_udp_errors() -> int:
    """Return the host's UDP receive-buffer and input errors (/proc/net/snmp)."""
    lines = [
        line.split()
        for line in Path("/proc/net/snmp").read_text().splitlines()
        if line.startswith("Udp:")
    ]
    header, values = lines[0], lines[1]
    counts = dict(zip(header[1:], (int(value) for value in values[1:]), strict=True))
    return counts.get("RcvbufErrors", 0) + counts.get("InErrors", 0)


def exporters(
    profiles: Sequence[Profile],
    mix: Mix,
    first_source: int = 10,
    pool: int = POOL_PACKETS,
) -> list[Exporter]:
    """Return one exporter per profile, each from its own loopback address."""
    clock = Clock(int(time.time()), 3_600_000)
    found = []
    for index, profile in enumerate(profiles):
        packets = data_packets(profile, mix, clock, pool, seed=index + 1)
        templates = [] if profile.version == 5 else [template_packet(profile, clock)]
        found.append(
            Exporter(
                source=f"127.0.0.{first_source + index}",
                version=profile.version,
                templates=templates,
                packets=[_row(packet) for packet in packets],
            )
        )
    return found


def _row(packet: Packet) -> tuple[bytes, int, int, int]:
    """Flatten a packet for the sender's pool."""
    return packet.data, packet.records, packet.packets, packet.findings


def run_sender(plan: Plan, folder: Path) -> dict[str, float]:
    """Run the sender process on a plan and return what it sent."""
    path = folder / "plan.pickle"
    write_plan(plan, path)
    result = subprocess.run(
        [sys.executable, "-m", "bench.sender", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=plan.seconds * 3 + 30,
        check=False,
    )
    if result.returncode != 0:
        raise CollectorError(f"sender failed: {result.stderr[-1000:]}")
    sent: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return sent


def wait_drained(port: int) -> tuple[int, int]:
    """Wait until the collector's socket is empty; return (queued, drops) then."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    row = udp_socket_row(port) or (0, 0)
    while row[0] and time.monotonic() < deadline:
        time.sleep(0.05)
        row = udp_socket_row(port) or (0, 0)
    return row


def step(collector: Collector, plan: Plan, rate: float, uses_packets: bool) -> Step:
    """Run one collector at one rate and count its loss."""
    with tempfile.TemporaryDirectory(prefix="flowtrap-bench-") as name:
        folder = Path(name)
        try:
            port = collector.start(folder)
            ports = getattr(collector, "ports", None) or [port]
            plan.port, plan.ports, plan.rate = port, ports, rate
            before = host_udp_errors()
            sent = run_sender(plan, folder)
            drops = sum(wait_drained(each)[1] for each in ports)
            host = host_udp_errors() - before
            stored = collector.stop()
        except (CollectorError, subprocess.SubprocessError, OSError) as error:
            collector.kill()
            return Step(collector.name, rate, 0, 0, 0, 1.0, 0, 0, str(error)[:200])
    wanted = int(sent["packets"] if uses_packets else sent["records"])
    kept = (stored.packets if uses_packets else stored.records) or 0
    return Step(
        collector=collector.name,
        rate=rate,
        sent_rate=sent["datagrams"] / max(sent["seconds"], 1e-9),
        sent_records=int(sent["records"]),
        stored=kept,
        loss=max(0.0, 1.0 - kept / wanted) if wanted else 1.0,
        socket_drops=drops,
        host_drops=host,
    )


def sweep(
    version: int,
    collectors: Sequence[Collector],
    pool: list[Exporter],
    rates: Sequence[float],
    seconds: float,
    sender_cpu: int | None,
    log: bool = True,
) -> Sweep:
    """Raise the rate step by step; each collector runs until it loses."""
    rows = [row for exporter in pool for row in exporter.packets]
    result = Sweep(version, sum(row[1] for row in rows) / max(1, len(rows)))
    racing = list(collectors)
    plan = Plan(port=0, rate=0.0, seconds=seconds, exporters=pool, cpu=sender_cpu)
    for rate in rates:
        for collector in list(racing):
            outcome = _step_twice(collector, plan, rate)
            result.steps.append(outcome)
            if log:
                _print_step(version, outcome)
            if outcome.held:
                result.held[collector.name] = rate
                if outcome.sent_rate < rate * 0.95:
                    result.note[collector.name] = "sender could not go faster"
                    racing.remove(collector)
            else:
                result.held.setdefault(collector.name, 0.0)
                if outcome.error:
                    result.note[collector.name] = outcome.error
                racing.remove(collector)
        if not racing:
            break
    for collector in racing:
        result.note[collector.name] = "held the top of the ladder"
    return result


def _step_twice(collector: Collector, plan: Plan, rate: float) -> Step:
    """Run a step; on loss run it once more and keep the better of the two.

    The machine is shared: one noisy moment should not decide a rate.
    """
    uses_packets = collector.name == "nfacctd"
    outcome = step(collector, plan, rate, uses_packets)
    if not outcome.held and not outcome.error:
        retry = step(collector, plan, rate, uses_packets)
        outcome = retry if retry.loss < outcome.loss else outcome
    return outcome


def refine(
    result: Sweep,
    collectors: Sequence[Collector],
    pool: list[Exporter],
    factor: float,
    seconds: float,
    sender_cpu: int | None,
    rounds: int = 2,
) -> None:
    """Narrow each collector's result between its last held and first lost rate."""
    plan = Plan(port=0, rate=0.0, seconds=seconds, exporters=pool, cpu=sender_cpu)
    bounds = {
        c.name: (result.held[c.name], result.held[c.name] * factor)
        for c in collectors
        if result.held.get(c.name) and c.name not in result.note
    }
    for _ in range(rounds):
        for collector in collectors:
            if collector.name not in bounds:
                continue
            low, high = bounds[collector.name]
            middle = round((low * high) ** 0.5, -2)
            outcome = _step_twice(collector, plan, middle)
            result.steps.append(outcome)
            _print_step(result.version, outcome)
            if outcome.held:
                bounds[collector.name] = (middle, high)
                result.held[collector.name] = middle
            else:
                bounds[collector.name] = (low, middle)


def _print_step(version: int, outcome: Step) -> None:
    """Print one step as it finishes, so a long sweep shows progress."""
    name = {5: "v5", 9: "v9", 10: "IPFIX"}[version]
    status = "held" if outcome.held else "LOST"
    if outcome.error:
        status = f"ERROR {outcome.error}"
    print(
        f"  {name:5} {outcome.collector:22} {outcome.rate:>9,.0f}/s "
        f"sent {outcome.sent_rate:>9,.0f}/s loss {outcome.loss:7.3%} "
        f"socket drops {outcome.socket_drops:>7} {status}",
        file=sys.stderr,
        flush=True,
    )


def ladder(start: float, stop: float, factor: float) -> list[float]:
    """Return rates from start, each factor times the last, up to stop."""
    rates = []
    rate = start
    while rate <= stop:
        rates.append(round(rate, -2))
        rate *= factor
    return rates


def flowtrap_has_workers() -> bool:
    """Return True when ``flowtrap run --help`` offers ``--workers``."""
    result = subprocess.run(
        [sys.executable, "-m", "collector", "run", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return "--workers" in result.stdout


def default_collectors(cpu: str | None) -> list[Collector]:
    """Return flowtrap, then the peers that are installed."""
    import shutil

    from bench.collectors import Nfacctd, Nfcapd

    found: list[Collector] = [Flowtrap(cpu)]
    if shutil.which("nfcapd") and shutil.which("nfdump"):
        found.append(Nfcapd(cpu))
    if shutil.which("nfacctd"):
        found.append(Nfacctd(cpu))
    return found
