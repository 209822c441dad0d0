"""Detectors from other packages, and a failing detector costing only itself.

The example package in ``examples/`` is installed with pip into a scratch
directory and found by ``flowtrap replay`` through the ``flowtrap.detectors``
entry point group.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from collector.capture import Datagram
from collector.decoder import Decoder
from collector.pipeline import ERROR_LOG_EVERY, Pipeline
from detectors.base import Finding
from detectors.registry import build
from detectors.windows import Windows
from schemas.flow import FlowRecord
from tests.conftest import EXPORTS, ROOT
from tests.test_detectors_callback import (
    CALLBACK_ROW,
    EXPORT_SECS,
    PROBE_ROW,
    Keep,
    export,
)
from tests.test_detectors_cups import context

EXAMPLE = ROOT / "examples" / "flowtrap-example-detector"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Install the example detector package with pip into a scratch directory."""
    work = tmp_path_factory.mktemp("plugin")
    source = work / "source"
    # Build from a copy: setuptools leaves build/ and egg-info/ beside the sources.
    shutil.copytree(EXAMPLE, source)
    target = work / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    return target


def flowtrap(plugin_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the flowtrap command with the example package on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_path), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-m", "collector", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


def test_installed_example_detector_raises_its_event_in_a_replay(
    plugin_path: Path,
) -> None:
    """The entry point makes ipp_print_external a detector flowtrap can enable."""
    done = flowtrap(
        plugin_path,
        "replay",
        str(EXPORTS / "softflowd-v9.pcap"),
        "--detectors",
        "ipp_print_external,cups_browsed_internal_external",
    )
    assert done.returncode == 0, done.stderr
    events = [orjson.loads(line) for line in done.stdout.splitlines() if line]
    ipp = [e for e in events if e["rule"]["name"] == "ipp_print_external"]
    assert [(e["source"]["ip"], e["destination"]["ip"]) for e in ipp] == [
        ("10.1.0.5", "203.0.113.11")
    ]
    assert ipp[0]["destination"]["port"] == 631
    assert ipp[0]["network"]["transport"] == "tcp"
    # The seed detector runs beside it: its two egress events (IPv4, IPv6).
    assert len(events) == 3


def test_plugin_name_unknown_without_the_package(plugin_path: Path) -> None:
    """Without the package installed the name is refused, listing known detectors."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "collector",
            "replay",
            str(EXPORTS / "softflowd-v9.pcap"),
            "--detectors",
            "ipp_print_external",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 2
    assert "unknown detector ipp_print_external" in done.stderr


class Failing:
    """A detector that raises on every flow record it is given."""

    def __init__(self) -> None:
        """Take the inbound probe detector's rule, renamed, and its interest."""
        (real,) = build(["cups_browsed_external_internal"], context())
        self.rule = dataclasses.replace(real.rule, name="failing")
        self.interest = real.interest

    def evaluate(self, flow: FlowRecord) -> list[Finding]:
        """Fail."""
        raise RuntimeError("detector bug")


def test_a_raising_detector_is_counted_and_the_others_keep_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Failures are counted per detector and logged once a minute at most."""
    sink = Keep()
    detectors = [*build(["cups_browsed_callback"], context()), Failing()]
    pipeline = Pipeline(Decoder(), detectors, Windows(), [sink])
    pipeline.feed(Datagram("192.0.2.1", 2055, EXPORT_SECS, export(template=True)))
    with caplog.at_level(logging.ERROR, logger="collector.pipeline"):
        for n in range(5):
            data = export(PROBE_ROW, CALLBACK_ROW)
            pipeline.feed(Datagram("192.0.2.1", 2055, EXPORT_SECS + n, data))
        pipeline.feed(
            Datagram("192.0.2.1", 2055, EXPORT_SECS + ERROR_LOG_EVERY + 5, export())
        )
        pipeline.feed(
            Datagram(
                "192.0.2.1",
                2055,
                EXPORT_SECS + ERROR_LOG_EVERY + 6,
                export(PROBE_ROW),
            )
        )
    pipeline.flush()
    assert pipeline.detector_errors["failing"] == 6
    logged = [r for r in caplog.records if r.getMessage() == "detector failed"]
    assert [getattr(r, "since_last", None) for r in logged] == [1, 5]
    assert [e.rule.name for e in sink.events] == ["cups_browsed_callback"]
