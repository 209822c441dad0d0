"""The lab, live: network namespaces, a real exporter, ``flowtrap run``, events.

These run what ``make lab`` runs, once with each exporter (softflowd, the
default, and pmacctd).  They need root (network namespaces), iproute2,
softflowd and pmacctd; without them they skip, except in CI, where
FLOWTRAP_REQUIRE_EXPORTERS turns that skip into a failure.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lab.traffic import CALLBACK_PORT, DISCARD_PORT
from tests.exporters import exporter_path
from tools.lab import (
    CALLBACK_DETECTOR,
    EGRESS_DETECTOR,
    REPO,
    Lab,
    LabResult,
    expected_detectors,
)
from tools.lab_exporters import DEFAULT_EXPORTER, EXPORTERS, SoftflowdStalledError
from tools.lab_netns import (
    OUTSIDE,
    PREFIX,
    WORKSTATION,
    LabNetworkError,
    Topology,
    clean_stale,
    ip_command,
    lab_namespaces,
    namespace_pids,
)

pytestmark = pytest.mark.exporter

#: Seconds a lab process may take to reach a given step or to exit.
BOUND = 60.0


def require_lab(exporter: str = DEFAULT_EXPORTER) -> None:
    """Skip without root, ip or the exporter; fail instead when CI requires them."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces)")
    try:
        ip_command()
    except LabNetworkError:
        missing.append("ip (apt-get install iproute2)")
    if exporter_path(exporter) is None:
        missing.append(f"{exporter} (apt-get install pmacct softflowd)")
    if not missing:
        return
    message = "the lab needs " + ", ".join(missing)
    if os.environ.get("FLOWTRAP_REQUIRE_EXPORTERS"):
        pytest.fail(f"{message}; FLOWTRAP_REQUIRE_EXPORTERS forbids skipping")
    pytest.skip(message)


def of(result: LabResult, detector: str) -> list[dict[str, Any]]:
    """Return the events one detector wrote."""
    return [e for e in result.events if e["event"]["action"] == detector]


def namespaces_of(owner: int) -> list[str]:
    """Return the lab namespaces a lab process ``owner`` made."""
    return [name for name in lab_namespaces() if name.startswith(f"{PREFIX}{owner}-")]


def run_lab(exporter: str, factory: pytest.TempPathFactory) -> LabResult:
    """Run the lab once with ``exporter``, skipping where it cannot run."""
    require_lab(exporter)
    return Lab(factory.mktemp(f"lab-{exporter}"), exporter=exporter).run()


@pytest.fixture(scope="module")
def softflowd_run(tmp_path_factory: pytest.TempPathFactory) -> LabResult:
    """Run the lab once with softflowd, the default exporter."""
    return run_lab("softflowd", tmp_path_factory)


@pytest.fixture(scope="module")
def pmacctd_run(tmp_path_factory: pytest.TempPathFactory) -> LabResult:
    """Run the lab once with pmacctd, the other exporter."""
    return run_lab("pmacctd", tmp_path_factory)


@pytest.fixture(params=EXPORTERS)
def lab_run(request: pytest.FixtureRequest) -> LabResult:
    """The lab's run with each exporter in turn (each run once per module)."""
    result: LabResult = request.getfixturevalue(f"{request.param}_run")
    return result


def test_lab_config_enables_both_detectors_the_traffic_trips() -> None:
    """lab/flowtrap.toml enables the egress and the callback detector."""
    assert expected_detectors() == [EGRESS_DETECTOR, CALLBACK_DETECTOR]


def test_lab_workstation_egress_raises_one_event(lab_run: LabResult) -> None:
    """The three browse packets to the outside host's UDP/631 are one event."""
    events = of(lab_run, EGRESS_DETECTOR)
    assert len(events) == 1
    event = events[0]
    assert event["source"]["ip"] == WORKSTATION
    assert event["destination"] == {"ip": OUTSIDE, "port": 631}
    assert event["network"]["transport"] == "udp"
    assert event["observer"]["ip"] == [WORKSTATION]
    assert event["flowtrap"]["flows"] == 1
    assert event["flowtrap"]["packets"] == 3
    # Both export absolute times in IPFIX; softflowd's are the capture's own,
    # so processing its packets late (one full block at a time) moves none.
    assert all(flow["time_trusted"] for flow in event["flowtrap"]["sample"])


def test_lab_probe_and_callback_raise_the_callback_event(lab_run: LabResult) -> None:
    """The outside host's probe and the workstation's TCP callback are one event."""
    events = of(lab_run, CALLBACK_DETECTOR)
    assert len(events) == 1
    assert {WORKSTATION, OUTSIDE} <= set(events[0]["related"]["ip"])
    callbacks = [
        flow
        for flow in events[0]["flowtrap"]["sample"]
        if (flow["src_addr"], flow["dst_addr"], flow["dst_port"], flow["protocol"])
        == (WORKSTATION, OUTSIDE, CALLBACK_PORT, 6)
    ]
    assert len(callbacks) == 1


def test_lab_ordinary_traffic_and_the_inbound_probe_raise_no_event(
    lab_run: LabResult,
) -> None:
    """DNS, TCP/443, the probe into UDP/631 and the callback are not egress."""
    assert {e["event"]["action"] for e in lab_run.events} == set(expected_detectors())
    for event in of(lab_run, EGRESS_DETECTOR):
        assert event["destination"]["port"] == 631


def test_lab_background_burst_raises_no_event(lab_run: LabResult) -> None:
    """The discard datagrams reached the outside host and no event names them."""
    counts = re.search(r"'discard': (\d+)", lab_run.logs["outside"])
    assert counts is not None, lab_run.logs["outside"]
    assert int(counts[1]) > 0
    for event in lab_run.events:
        assert event["destination"]["port"] != DISCARD_PORT
        assert all(
            flow["dst_port"] != DISCARD_PORT for flow in event["flowtrap"]["sample"]
        )


def test_lab_collector_decodes_every_export_packet(lab_run: LabResult) -> None:
    """flowtrap run counted no decode error over the lab's live export."""
    assert "errors={}" in lab_run.logs["collector"]
    assert "flow_records=0" not in lab_run.logs["collector"]


def test_lab_leaves_no_namespace_behind(lab_run: LabResult) -> None:
    """Every namespace the lab made is gone once it has finished."""
    assert namespaces_of(os.getpid()) == []


def test_lab_softflowd_without_background_traffic_stalls(tmp_path: Path) -> None:
    """softflowd 1.1.0 processes nothing on a quiet interface: the burst is needed.

    It captures without libpcap's immediate mode, so packets are handed over
    only in full 256 KiB ring blocks (irino/softflowd PR 71).  When a fixed
    softflowd makes this fail, the lab's background burst can go.
    """
    require_lab("softflowd")
    with pytest.raises(SoftflowdStalledError):
        Lab(tmp_path, exporter="softflowd", background=0).run()
    assert namespaces_of(os.getpid()) == []


def _wait_until(condition: Any, what: str) -> None:
    """Poll ``condition`` until it is true, failing after BOUND seconds."""
    deadline = time.monotonic() + BOUND
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_lab_interrupted_mid_run_removes_its_namespaces(signum: int) -> None:
    """A signal while the lab runs stops its processes and deletes its namespaces."""
    require_lab()
    lab = subprocess.Popen(
        [sys.executable, str(REPO / "tools" / "lab.py"), "run"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Interrupt once the collector runs inside the lab's own namespace.
        collector_ns = f"{PREFIX}{lab.pid}-col"
        _wait_until(
            lambda: namespace_pids(collector_ns), "the lab's collector to start"
        )
        lab.send_signal(signum)
        output, _ = lab.communicate(timeout=BOUND)
    finally:
        if lab.poll() is None:
            lab.kill()
            lab.wait()
        clean_stale()

    assert lab.returncode == 128 + signum, output
    assert namespaces_of(lab.pid) == []


def test_clean_removes_only_namespaces_of_dead_labs() -> None:
    """A dead lab's namespaces and processes go; a running lab's stay."""
    require_lab()
    dead_owner = subprocess.Popen(["true"])
    dead_owner.wait()

    stale, alive = Topology(owner=dead_owner.pid), Topology()
    leftover: subprocess.Popen[bytes] | None = None
    try:
        stale.build()
        alive.build()
        leftover = subprocess.Popen(stale.wrap("ws", ["sleep", "300"]))
        _wait_until(
            lambda: namespace_pids(stale.name("ws")),
            "the leftover process to enter the stale namespace",
        )

        removed = clean_stale()

        assert sorted(removed) == sorted(stale.created)
        assert namespaces_of(dead_owner.pid) == []
        assert sorted(namespaces_of(os.getpid())) == sorted(alive.created)
        assert leftover.wait(timeout=BOUND) == -signal.SIGKILL
    finally:
        if leftover is not None and leftover.poll() is None:
            leftover.kill()
            leftover.wait()
        alive.teardown()
        stale.teardown()
