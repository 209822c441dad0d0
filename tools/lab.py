"""``make lab``: the docker-compose lab, live in Linux network namespaces.

The same roles as ``docker-compose.yml``, with the same addresses, the same
traffic script and the same configuration files: a workstation and the
collector on the inside segment, a router, and an outside host.  An exporter
captures live on the workstation's interface and exports IPFIX to
``flowtrap run``; the workstation sends its traffic; the lab waits until the
events file shows the egress event and the callback event (when
``lab/flowtrap.toml`` enables its detector), as a SIEM agent tailing it would
see them, then stops everything and deletes every namespace, also when
interrupted.

Usage (root: network namespaces need CAP_SYS_ADMIN)::

    python tools/lab.py run [--exporter softflowd|pmacctd] [--keep DIR]
                            [--background DATAGRAMS]
    python tools/lab.py clean [--all]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lab.traffic import BACKGROUND_DATAGRAMS  # noqa: E402 - after the path is set
from tools.lab_exporters import (  # noqa: E402 - after the path is set
    DEFAULT_EXPORTER,
    EXPORT_PORT,
    EXPORTERS,
)
from tools.lab_exporters import exporter as make_exporter  # noqa: E402
from tools.lab_netns import (  # noqa: E402 - after the path is set
    CAPTURE_INTERFACE,
    COLLECTOR,
    OUTSIDE,
    WORKSTATION,
    Topology,
    clean_stale,
)
from tools.lab_process import (  # noqa: E402 - after the path is set
    STEP_TIMEOUT,
    Background,
    LabError,
    LabInterruptedError,
    interruptible,
    uninterrupted,
)
from tools.runner import read_events  # noqa: E402 - after the path is set

LAB = REPO / "lab"
TRAFFIC = LAB / "traffic.py"
FLOWTRAP_CONFIG = LAB / "flowtrap.toml"

EGRESS_DETECTOR = "cups_browsed_internal_external"
CALLBACK_DETECTOR = "cups_browsed_callback"


def expected_detectors() -> list[str]:
    """Return the detectors the lab's traffic trips that lab/flowtrap.toml enables.

    The egress is always expected; the probe and its callback only raise an
    event when the callback detector is enabled.
    """
    enabled = tomllib.loads(FLOWTRAP_CONFIG.read_text())["detection"]["enabled"]
    return [EGRESS_DETECTOR] + [d for d in (CALLBACK_DETECTOR,) if d in enabled]


@dataclass(frozen=True)
class LabResult:
    """What one lab run produced."""

    events: list[dict[str, Any]]
    exporter: str
    seconds: float
    logs: dict[str, str]


@dataclass
class Lab:
    """One run of the lab in a work directory (logs and the events file)."""

    workdir: Path
    exporter: str = DEFAULT_EXPORTER
    #: Datagrams of the workstation's background burst at the end of its round.
    background: int = BACKGROUND_DATAGRAMS
    wait_seconds: float = STEP_TIMEOUT
    report: Callable[[str], None] = lambda line: None
    topology: Topology = field(default_factory=Topology)
    _running: list[Background] = field(default_factory=list)

    @property
    def events_path(self) -> Path:
        """The events file the collector writes, as the compose volume holds it."""
        return self.workdir / "events.jsonl"

    def run(self) -> LabResult:
        """Build the lab, play the traffic, collect the events, tear it all down."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        logs: dict[str, str] = {}
        try:
            with interruptible():
                events = self._play()
        finally:
            with uninterrupted():
                for process in reversed(self._running):
                    process.stop()
                    logs[process.name] = process.text()
                self._running.clear()
                removed = self.topology.teardown()
                self.report(f"removed namespaces {', '.join(removed)}")
        return LabResult(events, self.exporter, time.monotonic() - started, logs)

    def _start(self, role: str, name: str, command: Sequence[str]) -> Background:
        """Start ``command`` in ``role``'s namespace, logging to ``name``.log."""
        log = self.workdir / f"{name}.log"
        process = Background.start(name, self.topology.wrap(role, command), log, REPO)
        self._running.append(process)
        return process

    def _play(self) -> list[dict[str, Any]]:
        """Every step between building the namespaces and stopping the collector."""
        exporter = make_exporter(self.exporter, self.workdir)
        for name in clean_stale():
            self.report(f"removed stale namespace {name}")
        self.topology.build()
        self.report(f"namespaces {self.topology.name('*')} up")

        collector = self._start(
            "col",
            "collector",
            [sys.executable, "-m", "collector", "run", "--config",
             str(FLOWTRAP_CONFIG), "--events", str(self.events_path)],
        )  # fmt: skip
        collector.wait_for("collector started")
        self.report(f"flowtrap run listening on {COLLECTOR}:{EXPORT_PORT}")

        outside = self._start(
            "out",
            "outside",
            [sys.executable, str(TRAFFIC), "outside", "--address", OUTSIDE],
        )
        outside.wait_for("ready")
        self.report(f"outside host {OUTSIDE} serving")

        capture = self._start("ws", exporter.name, exporter.command)
        for marker in exporter.ready:
            capture.wait_for(marker)
        self.report(
            f"{exporter.name} capturing on the workstation's {CAPTURE_INTERFACE}, "
            f"exporting IPFIX to {COLLECTOR}:{EXPORT_PORT}"
        )

        self._workstation()
        exporter.check_capturing()

        # The exporter expires each flow a few seconds after its last packet
        # (its timeouts), and the collector writes the event once the window
        # has closed: the lab watches the file as a SIEM agent would.
        expected = expected_detectors()
        self.report(f"waiting for {', '.join(expected)} in {self.events_path}")
        self._wait_for_events(expected, collector, capture)
        capture.stop()
        exporter.check_log(capture.text())
        if collector.stop() != 0:
            raise LabError(f"flowtrap run failed on SIGTERM:\n{collector.text()}")
        return read_events(self.events_path)

    def _workstation(self) -> None:
        """Play one round of the workstation's traffic, probe, callback and burst."""
        command = [
            sys.executable, str(TRAFFIC), "workstation", "--address", WORKSTATION,
            "--outside", OUTSIDE, "--rounds", "1",
            "--background", str(self.background),
        ]  # fmt: skip
        log = self.workdir / "workstation.log"
        with log.open("wb") as sink:
            done = subprocess.run(
                self.topology.wrap("ws", command),
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                timeout=STEP_TIMEOUT * 2,
                check=False,
            )
        for line in log.read_text().splitlines():
            self.report(f"  workstation: {line.split(': ', 1)[-1]}")
        if done.returncode != 0:
            raise LabError(f"the workstation's round failed:\n{log.read_text()}")

    def _wait_for_events(
        self, detectors: Sequence[str], *witnesses: Background
    ) -> None:
        """Wait until the events file holds an event of each of ``detectors``."""
        deadline = time.monotonic() + self.wait_seconds
        missing = set(detectors)
        while time.monotonic() < deadline:
            written = (
                self.events_path.read_bytes() if self.events_path.exists() else b""
            )
            # Only whole lines: the collector may be halfway through a write.
            whole = written[: written.rfind(b"\n") + 1]
            missing -= {
                orjson.loads(line)["event"]["action"]
                for line in whole.splitlines()
                if line
            }
            if not missing:
                return
            time.sleep(0.2)
        logs = "".join(f"\n--- {w.name}:\n{w.text()}" for w in witnesses)
        raise LabError(
            f"no {', '.join(sorted(missing))} event within "
            f"{self.wait_seconds:g} s{logs}"
        )


def summary(events: list[dict[str, Any]]) -> list[str]:
    """Return one line per event: detector, endpoints, flows and packets."""
    lines = []
    for event in events:
        source = f"{event['source']['ip']}:{event['source']['port']}"
        target = f"{event['destination']['ip']}:{event['destination']['port']}"
        lines.append(
            f"{event['event']['action']:<32} {source:<21} -> {target:<21} "
            f"flows={event['flowtrap']['flows']} packets={event['flowtrap']['packets']}"
        )
    return lines


def _run(args: argparse.Namespace) -> int:
    """Run the lab once and print what a SIEM agent tailing the events sees."""
    if os.geteuid() != 0:
        print(
            "make lab needs root: network namespaces need CAP_SYS_ADMIN",
            file=sys.stderr,
        )
        return 2
    with contextlib.ExitStack() as stack:
        workdir = args.keep or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="flowtrap-lab-"))
        )
        lab = Lab(
            workdir,
            exporter=args.exporter,
            background=args.background,
            report=lambda line: print(f"lab: {line}"),
        )
        try:
            result = lab.run()
        except KeyboardInterrupt:
            print("lab: interrupted by SIGINT", file=sys.stderr)
            return 128 + signal.SIGINT
        except LabInterruptedError as error:
            print(f"lab: {error}", file=sys.stderr)
            return 128 + error.signum
        except LabError as error:
            print(f"lab: failed: {error}", file=sys.stderr)
            return 1
        print(f"\n{len(result.events)} events in {lab.events_path}:")
        for line in lab.events_path.read_text().splitlines():
            print(line[:200] + (" ..." if len(line) > 200 else ""))
        print("\nsummary:")
        for line in summary(result.events):
            print(f"  {line}")
        print(f"\nlab finished in {result.seconds:.1f} s")
        raised = {e["event"]["action"] for e in result.events}
        return 0 if set(expected_detectors()) <= raised else 1


def _clean(args: argparse.Namespace) -> int:
    """Remove lab namespaces left behind by a lab that is no longer running."""
    removed = clean_stale(everything=args.all)
    print("\n".join(f"removed {name}" for name in removed) or "no lab namespaces left")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the lab, or clean up after a crashed one."""
    parser = argparse.ArgumentParser(description="flowtrap's lab in network namespaces")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the lab once and show the events")
    run.add_argument("--exporter", choices=EXPORTERS, default=DEFAULT_EXPORTER)
    run.add_argument("--keep", type=Path, help="keep logs and events in this directory")
    run.add_argument(
        "--background",
        type=int,
        default=BACKGROUND_DATAGRAMS,
        metavar="DATAGRAMS",
        help="the workstation's background burst (0: none, which stalls softflowd)",
    )
    clean = commands.add_parser("clean", help="remove namespaces of dead labs")
    clean.add_argument("--all", action="store_true", help="also those of running labs")
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args)
    return _clean(args)


if __name__ == "__main__":
    sys.exit(main())
