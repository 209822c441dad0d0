"""``flowtrap run --workers N``: several processes receive and decode, one detects.

Real processes on 127.0.0.1: exporters send from 127.0.0.2-9, the kernel's
reuseport group steers each by its address to one worker, and the one
detecting process must find what a single process finds.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from collector.capture import read_capture
from collector.steering import steer_by_source
from tests.conftest import EXPORT_CAPTURES, EXPORTS, ROOT
from tests.ops import (
    exporter_packets,
    fold_events,
    http_get,
    metrics_address,
    sample,
    scrape,
    scrape_until,
    wait_for,
)
from tests.packets import five_tuple
from tests.test_cluster import PROBER, VICTIM, export_packet
from tests.test_detectors_cups import ALL as ALL_DETECTORS
from tools.runner import CollectorProcess, send_payloads

ALL = ",".join(ALL_DETECTORS)
_STOPPED = re.compile(r"collector stopped datagrams=(\d+).*flow_records=(\d+)")


def test_the_group_steers_each_source_address_to_one_socket() -> None:
    """The BPF program picks the socket by source address modulo the group size."""
    count = 3
    group = []
    port = 0
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.setblocking(False)
        port = sock.getsockname()[1]
        group.append(sock)
    steer_by_source(group[0], count)
    try:
        for last in range(2, 14):
            # Several source ports each: the address alone decides.
            for _ in range(4):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                    sender.bind((f"127.0.0.{last}", 0))
                    sender.sendto(b"x", ("127.0.0.1", port))
        time.sleep(0.2)
        landed: dict[str, set[int]] = defaultdict(set)
        for index, sock in enumerate(group):
            while True:
                try:
                    _, (source, _) = sock.recvfrom(64)
                except BlockingIOError:
                    break
                landed[source].add(index)
    finally:
        for sock in group:
            sock.close()
    assert len(landed) == 12
    for source, indexes in landed.items():
        assert indexes == {int(ipaddress.IPv4Address(source)) % count}, source


def _send_captures(port: int) -> None:
    """Send each capture from its own exporter address, 127.0.0.2 onwards."""

    async def send() -> None:
        for index, name in enumerate(EXPORT_CAPTURES):
            packets = [d.data for d in read_capture(EXPORTS / name)]
            await send_payloads(packets, port, f"127.0.0.{index + 2}")

    asyncio.run(send())


def _run(tmp_path: Path, name: str, extra: list[str]) -> tuple[list[Any], str]:
    """Run one collector on the captures; return its events and final log."""
    flags = ["--detectors", ALL, *extra]
    with CollectorProcess(tmp_path / f"{name}.jsonl", flags) as collector:
        _send_captures(collector.port)
        time.sleep(1.0)
        return collector.stop(), collector.stderr


@pytest.mark.exporter
def test_three_workers_find_what_one_process_finds(tmp_path: Path) -> None:
    """Same counts, same findings; each exporter decoded whole by one worker."""
    single, single_log = _run(tmp_path, "single", [])
    workers, workers_log = _run(tmp_path, "workers", ["--workers", "3"])

    single_counts = _STOPPED.search(single_log)
    worker_counts = _STOPPED.search(workers_log)
    assert single_counts is not None
    assert worker_counts is not None
    # Every datagram and every record: an exporter split over two workers
    # would leave data waiting for a template the other one learned.
    assert worker_counts.groups() == single_counts.groups()
    assert {e["rule"]["name"] for e in single} >= {
        "cups_browsed_internal_external",
        "cups_browsed_external_internal",
        "cups_browsed_callback",
    }
    # Which exporter's copy of a flow a detector counts once is arrival order.
    folded, expected = fold_events(workers), fold_events(single)
    for found in (*folded.values(), *expected.values()):
        del found["observers"]
    assert folded == expected
    ids = [e["event"]["id"] for e in workers]
    assert len(ids) == len(set(ids))


@pytest.mark.exporter
def test_a_callback_decoded_by_another_worker_before_its_probe_correlates(
    tmp_path: Path,
) -> None:
    """The callback reaches worker 1 first, the probe worker 0: one event.

    The callback's worker keeps its rows; once the detecting process watches
    the probed host, that worker looks back and sends the callback.
    """
    now = int(time.time())
    probe = five_tuple(PROBER, VICTIM, 40001, 631)
    callback = five_tuple(VICTIM, PROBER, 51000, 631, proto=6, pkts=8)
    flags = ["--detectors", "cups_browsed_callback", "--workers", "2"]
    # 127.0.0.2 and 127.0.0.3 differ in their last bit: different workers.
    with CollectorProcess(tmp_path / "events.jsonl", flags) as collector:
        asyncio.run(
            send_payloads(
                [export_packet([callback], now + 1)], collector.port, "127.0.0.3"
            )
        )
        time.sleep(0.5)
        asyncio.run(
            send_payloads([export_packet([probe], now)], collector.port, "127.0.0.2")
        )
        time.sleep(1.0)
        events = collector.stop()
    callbacks = [e for e in events if e["rule"]["name"] == "cups_browsed_callback"]
    assert len(callbacks) == 1, events
    assert callbacks[0]["source"]["ip"] == VICTIM
    assert callbacks[0]["destination"]["ip"] == PROBER
    assert callbacks[0]["observer"]["ip"] == ["127.0.0.3"]


def test_a_worker_that_dies_stops_the_collector_with_an_error(tmp_path: Path) -> None:
    """A killed worker ends the run with exit status 1 and says why."""
    flags = ["--workers", "2"]
    with CollectorProcess(tmp_path / "events.jsonl", flags, timeout=30) as collector:
        found = re.search(r"pids=\[([\d, ]+)\]", "".join(collector.startup))
        assert found is not None
        pids = [int(pid) for pid in found.group(1).split(",")]
        assert len(pids) == 2
        os.kill(pids[1], signal.SIGKILL)
        assert collector.wait() == 1
    assert "worker exited" in collector.stderr
    assert "collector stopped by a failure; restart it" in collector.stderr
    # The other worker was told to stop and is gone too.
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)


@pytest.mark.exporter
def test_metrics_add_up_the_workers_counts(tmp_path: Path) -> None:
    """Per-exporter counts, datagrams received and socket counters, summed."""
    flags = ["--workers", "3", "--metrics", "127.0.0.1:0"]
    with CollectorProcess(tmp_path / "events.jsonl", flags) as collector:
        address = metrics_address(collector.started)
        _send_captures(collector.port)
        sent = sum(len(list(read_capture(EXPORTS / name))) for name in EXPORT_CAPTURES)

        scrape_until(
            address,
            lambda s: sum(exporter_packets(s).values()) >= sent,
            what="every export packet counted",
        )
        samples = scrape(address)
        collector.stop()
    assert set(exporter_packets(samples)) == {
        f"127.0.0.{i + 2}" for i in range(len(EXPORT_CAPTURES))
    }
    assert sample(samples, "flowtrap_datagrams_received_total") == sent
    listen = f"127.0.0.1:{collector.port}"
    assert sample(samples, "flowtrap_socket_receive_drops_total", listen=listen) == 0
    assert sample(samples, "flowtrap_socket_receive_buffer_bytes", listen=listen) > 0


@pytest.mark.exporter
def test_a_fast_probe_sweep_never_stalls_the_workers(tmp_path: Path) -> None:
    """40,000 probed hosts in under a second: every one watched, nothing stuck.

    Each probe makes the callback detector watch a host, which the detecting
    process tells the workers while they send it flow records: neither side
    may wait on the other.
    """
    count = 40_000
    now = int(time.time())
    probes = [
        five_tuple(
            f"203.0.113.{n % 50 + 1}",
            f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}",
            40000,
            631,
        )
        for n in range(count)
    ]
    packets = [export_packet(probes[i : i + 30], now) for i in range(0, count, 30)]
    flags = [
        "--workers",
        "2",
        "--detectors",
        "cups_browsed_callback,cups_browsed_external_internal",
        "--metrics",
        "127.0.0.1:0",
    ]
    with CollectorProcess(tmp_path / "events.jsonl", flags, timeout=60) as collector:
        address = metrics_address(collector.started)
        senders = []
        for n in range(4):
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sender.bind((f"127.0.0.{n + 2}", 0))
            senders.append(sender)
        try:
            for n, packet in enumerate(packets):
                senders[n % 4].sendto(packet, ("127.0.0.1", collector.port))
                if n % 50 == 49:
                    time.sleep(0.005)
        finally:
            for sender in senders:
                sender.close()
        probe = "cups_browsed_external_internal"
        scrape_until(
            address,
            lambda s: sample(s, "flowtrap_findings_total", detector=probe) >= count,
            what="a finding for every probe",
        )
        collector.stop()


def test_a_second_collector_on_the_same_address_is_refused(tmp_path: Path) -> None:
    """SO_REUSEPORT would let it join the first one's group silently."""
    with CollectorProcess(tmp_path / "first.jsonl", ["--workers", "2"]) as first:
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "collector",
                "run",
                "--listen",
                f"127.0.0.1:{first.port}",
                "--events",
                str(tmp_path / "second.jsonl"),
                "--workers",
                "3",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        first.stop()
    assert second.returncode == 2
    assert "another program listens there" in second.stderr


def test_a_stuck_worker_fails_healthz_until_it_reports_again(tmp_path: Path) -> None:
    """A stopped (SIGSTOP) worker is noticed: /healthz answers 503, then 200."""
    flags = ["--workers", "2", "--metrics", "127.0.0.1:0"]
    with CollectorProcess(tmp_path / "events.jsonl", flags, timeout=30) as collector:
        address = metrics_address(collector.started)
        found = re.search(r"pids=\[([\d, ]+)\]", "".join(collector.startup))
        assert found is not None
        stuck = int(found.group(1).split(",")[1])
        url = f"http://{address}/healthz"
        assert http_get(url)[0] == 200
        os.kill(stuck, signal.SIGSTOP)
        try:
            wait_for(lambda: http_get(url)[0] == 503, timeout=40, what="503")
        finally:
            os.kill(stuck, signal.SIGCONT)
        wait_for(lambda: http_get(url)[0] == 200, timeout=20, what="200 again")
        collector.stop()
    assert "workers not reporting" in collector.stderr + "".join(collector.startup)
