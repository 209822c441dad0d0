"""Events under load: a burst of findings written while flow records keep coming.

Two runs of ``flowtrap run`` at the same datagram rate and for the same time.
The baseline sends ordinary traffic only. The burst run sends the same, but a
block of export packets in the middle carries nothing but findings, each for its
own (source, destination) pair, so each becomes an event. Their flows ended
minutes ago, so the windows close (and the events are written) while the
ordinary traffic is still arriving. The burst passes when every finding is in an
event and the run loses no more flow records than the baseline.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench.collectors import CollectorError, Flowtrap
from bench.live import exporters, run_sender, wait_drained
from bench.memory import rss_mb
from bench.packets import MAX_RECORDS, Mix
from bench.profiles import Profile
from bench.sender import Plan

# Flows this old close their windows at once (window 60 s + lateness 120 s).
OLD_FLOWS = 600.0


@dataclass(slots=True)
class BurstRun:
    """One run: what was sent, kept, found and written."""

    rate: float
    sent_records: int
    stored_records: int
    findings_sent: int
    events: int
    flows_in_events: int
    seconds: float
    dropped_events: int | None = None
    # The collector's peak RSS (VmHWM): the backlog a burst builds included.
    peak_rss_mb: float = 0.0

    @property
    def loss(self) -> float:
        """Return the share of flow records not stored."""
        if not self.sent_records:
            return 1.0
        return max(0.0, 1 - self.stored_records / self.sent_records)


@dataclass(slots=True)
class BurstResult:
    """The baseline and the burst run side by side."""

    findings: int
    baseline: BurstRun
    burst: BurstRun


def _events(folder: Path) -> tuple[int, int]:
    """Return (events, flows counted in them) from every event file in a folder.

    ``--events PATH`` writes PATH itself, or (with rotation) files named after
    it plus a link to the newest; each regular file is read once.
    """
    events = flows = 0
    for path in sorted(folder.glob("events*.jsonl")):
        if path.is_symlink() or not path.is_file():
            continue
        for line in path.read_bytes().splitlines():
            if not line:
                continue
            event = orjson.loads(line)
            events += 1
            info = event.get("flowtrap") or {}
            flows += int(info.get("flows", event.get("flowtrap.flows", 0)))
    return events, flows


def _run(
    profiles: list[Profile], rate: float, seconds: float, findings: int, cpu: str | None
) -> BurstRun:
    """Run one collector: ordinary traffic, an optional burst, ordinary again."""
    ordinary = exporters(profiles, Mix(age_seconds=OLD_FLOWS))
    burst_packets = -(-findings // MAX_RECORDS)
    # One exporter whose every packet is new: no pair repeats in the burst.
    burst_pool = exporters(
        profiles[:1],
        Mix(age_seconds=OLD_FLOWS, all_findings=True),
        first_source=200,
        pool=max(1, burst_packets),
    )
    half = seconds / 2
    phases = [Plan(0, rate, half, ordinary)]
    if findings:
        phases.append(Plan(0, rate, 0, burst_pool, count=burst_packets))
    phases.append(Plan(0, rate, half, ordinary))

    collector = Flowtrap(cpu, backlog_bytes=None)
    with tempfile.TemporaryDirectory(prefix="flowtrap-bench-") as name:
        folder = Path(name)
        port = collector.start(folder)
        totals = {"records": 0, "findings": 0}
        start = time.monotonic()
        for phase in phases:
            phase.port = port
            phase.cpu = 0
            sent = run_sender(phase, folder)
            totals["records"] += int(sent["records"])
            totals["findings"] += int(sent["findings"])
        wait_drained(port)
        # Let the last windows close before stopping, as in steady operation.
        time.sleep(2.0)
        _, peak = rss_mb(collector.pid)
        stored = collector.stop()
        elapsed = time.monotonic() - start
        events, flows = _events(folder)
    return BurstRun(
        rate=rate,
        sent_records=totals["records"],
        stored_records=stored.records or 0,
        findings_sent=totals["findings"],
        events=events,
        flows_in_events=flows,
        seconds=elapsed,
        dropped_events=stored.dropped_events,
        peak_rss_mb=peak,
    )


def run(
    profiles: list[Profile],
    rate: float,
    seconds: float,
    findings: int,
    cpu: str | None,
) -> BurstResult | str:
    """Run the baseline and the burst at one rate; a failure returns its reason."""
    burst_profiles = _ipv4_v9(profiles, findings)
    try:
        baseline = _run(burst_profiles, rate, seconds, 0, cpu)
        burst = _run(burst_profiles, rate, seconds, findings, cpu)
    except CollectorError as error:
        return str(error)
    return BurstResult(findings, baseline, burst)


def _ipv4_v9(profiles: list[Profile], findings: int) -> list[Profile]:
    """Return the v9 profiles whose records are IPv4 (the burst's pairs are)."""
    chosen = [
        profile
        for profile in profiles
        if profile.version == 9
        and any(spec.element_id == 8 and not spec.enterprise for spec in profile.fields)
    ]
    return chosen or profiles
