"""Real exporters to a running collector: the CUPS probe and callback end to end.

softflowd and pmacctd read packet captures (the repo's lab-callback.pcap and,
when present, the public CUPS captures in ../shared/cups-pcaps-initconf) and
export them over UDP to ``flowtrap run`` on 127.0.0.1 with all four CUPS
detectors on. The internal networks are chosen per capture so that the probed
host is inside.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CUPS_PCAPS, FIXTURES, require_tool
from tests.exporters import EXPORTER_CASES, run_exporter
from tests.test_detectors_cups import ALL
from tools.runner import CollectorProcess

pytestmark = pytest.mark.exporter

PROBE = "cups_browsed_external_internal"
CALLBACK = "cups_browsed_callback"

Seen = set[tuple[str, str, str]]


def collect(
    exporter: str,
    version: int,
    captures: list[Path],
    internal: str,
    tmp_path: Path,
) -> list[dict[str, Any]]:
    """Export captures through a real exporter (one process each, all at once)."""
    require_tool("softflowd" if exporter == "softflowd" else "pmacctd")
    extra = ["--detectors", ",".join(ALL), "--internal-networks", internal]
    with CollectorProcess(tmp_path / "events.jsonl", extra) as collector:
        # pmacctd sleeps about 2 s before reading; run the exporters side by side.
        with ThreadPoolExecutor(max_workers=len(captures)) as pool:
            runs = [
                pool.submit(
                    run_exporter,
                    exporter,
                    capture,
                    version,
                    collector.port,
                    tmp_path / capture.stem,
                )
                for capture in captures
            ]
            for run in runs:
                run.result()
        events = collector.stop()
    assert "errors={}" in collector.stderr
    return events


def seen(events: list[dict[str, Any]]) -> Seen:
    """The (detector, source, destination) of each event."""
    return {
        (e["rule"]["name"], e["source"]["ip"], e["destination"]["ip"]) for e in events
    }


@pytest.mark.parametrize(
    ("exporter", "version"),
    EXPORTER_CASES,
    ids=[f"{name}-v{version}" for name, version in EXPORTER_CASES],
)
def test_lab_probe_and_callback_raise_both_events(
    exporter: str, version: int, tmp_path: Path
) -> None:
    """The lab probe and the victim's TCP back to the prober, from every exporter."""
    capture = FIXTURES / "lab-callback.pcap"
    events = collect(exporter, version, [capture], "10.0.0.0/8", tmp_path)
    assert seen(events) == {
        (PROBE, "198.51.100.66", "10.1.0.9"),
        (CALLBACK, "10.1.0.9", "198.51.100.66"),
    }
    (callback,) = [e for e in events if e["rule"]["name"] == CALLBACK]
    assert callback["event"]["severity"] == 73
    assert callback["destination"]["port"] == 8631
    assert callback["flowtrap"]["details"]["probe_source"] == "198.51.100.66"
    (probe,) = [e for e in events if e["rule"]["name"] == PROBE]
    assert probe["event"]["severity"] == 21
    assert probe["destination"]["port"] == 631


VICTIM = "198.128.211.166"
ATTACKER = "134.122.95.96"

# The captures with a probe only, the internal network that holds each probed
# host, and the probe event each must raise. The networks do not overlap any
# prober, so one collector takes them all.
PROBE_ONLY: list[tuple[str, str, tuple[str, str, str]]] = [
    ("udp.pcap", "198.128.0.0/16", (PROBE, ATTACKER, VICTIM)),
    ("cups-evilprinter.pcap", "129.61.0.0/16", (PROBE, "196.226.16.57", "129.61.5.5")),
    ("probe.pcap", "131.243.0.0/16", (PROBE, "199.247.0.94", "131.243.77.80")),
    (
        "callback-is-a-domain.pcap",
        "128.3.22.0/24",
        (PROBE, "128.3.6.30", "128.3.22.85"),
    ),
    ("different-uri.pcap", "128.3.22.0/24", (PROBE, "128.3.6.30", "128.3.22.85")),
]

SHARED_EXPORTERS = [("softflowd", 9), ("pmacctd", 10)]
SHARED_IDS = [f"{name}-v{version}" for name, version in SHARED_EXPORTERS]


def require_cups_pcap(name: str) -> Path:
    """Return a shared CUPS capture; skip without it, or fail when CI requires it."""
    path = CUPS_PCAPS / name
    if path.is_file():
        return path
    message = f"CUPS capture not found at {path}"
    if os.environ.get("FLOWTRAP_REQUIRE_CORPUS"):
        pytest.fail(f"{message}; FLOWTRAP_REQUIRE_CORPUS forbids skipping")
    pytest.skip(message)


@pytest.mark.corpus
@pytest.mark.parametrize(("exporter", "version"), SHARED_EXPORTERS, ids=SHARED_IDS)
def test_public_callback_capture_raises_probe_and_high_callback(
    exporter: str, version: int, tmp_path: Path
) -> None:
    """Both probes and the victim's TCP back to the prober, from real exporters.

    The exporters send the TCP flows before the UDP probe that caused them, so
    the collector must look back. pmacctd stamps its headers with the wall
    clock while the flows keep the capture's 2024 times, so its flows are
    untrusted and placed at export time; the callback correlates all the same.
    """
    capture = require_cups_pcap("callback.pcap")
    events = collect(exporter, version, [capture], "198.128.0.0/16", tmp_path)
    assert seen(events) == {(PROBE, ATTACKER, VICTIM), (CALLBACK, VICTIM, ATTACKER)}
    callbacks = [e for e in events if e["rule"]["name"] == CALLBACK]
    assert {e["event"]["severity"] for e in callbacks} == {73}
    assert {e["destination"]["port"] for e in callbacks} == {12345}
    # Two probes 12.6 h apart, each followed by six connections.
    assert sum(e["flowtrap"]["flows"] for e in callbacks) == 12


@pytest.mark.corpus
@pytest.mark.parametrize(("exporter", "version"), SHARED_EXPORTERS, ids=SHARED_IDS)
def test_public_probe_captures_raise_probe_events_and_no_callback(
    exporter: str, version: int, tmp_path: Path
) -> None:
    """Each probe is seen; no probed host called back, so no callback event."""
    captures = [require_cups_pcap(name) for name, _, _ in PROBE_ONLY]
    internal = ",".join(sorted({network for _, network, _ in PROBE_ONLY}))
    events = collect(exporter, version, captures, internal, tmp_path)
    assert seen(events) == {expected for _, _, expected in PROBE_ONLY}
