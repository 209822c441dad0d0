"""Prometheus metrics, /healthz and /readyz, scraped over HTTP."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from collector import stats as stats_module
from collector.listener import Listener
from collector.metrics import CollectorMetrics, Health, MetricsServer, registry_for
from collector.outputs import Outputs
from collector.outputs.formats import ECS
from collector.service import make_pipeline
from collector.sockets import open_socket
from collector.stats import OTHER_EXPORTERS, Stats
from detectors.networks import Networks
from schemas.config import Config
from tests.conftest import EXPORTS, FIXTURES, ROOT, require_tool
from tests.exporters import run_exporter
from tests.ops import http_get, metrics_address, sample, scrape_until
from tools.runner import CollectorProcess, send_capture

CUPS = "cups_browsed_internal_external"


def test_metrics_count_each_exporter_and_output_after_recorded_traffic(
    tmp_path: Path,
) -> None:
    """Two exporters' packets, templates, records and events appear by label."""
    events = tmp_path / "events.jsonl"
    with CollectorProcess(events, ["--metrics", "127.0.0.1:0"]) as collector:
        address = metrics_address(collector.started)
        send_capture(EXPORTS / "softflowd-v9.pcap", collector.port, "127.0.0.2")
        send_capture(EXPORTS / "pmacctd-v10.pcap", collector.port, "127.0.0.3")
        samples = scrape_until(
            address,
            lambda s: sample(s, "flowtrap_output_sent_total", output=str(events)) >= 4,
            what="four events written",
        )
        health = http_get(f"http://{address}/healthz")
        ready = http_get(f"http://{address}/readyz")
        collector.stop()

    for exporter in ("127.0.0.2", "127.0.0.3"):
        assert sample(samples, "flowtrap_export_packets_total", exporter=exporter) > 0
        assert sample(samples, "flowtrap_flow_records_total", exporter=exporter) >= 11
        assert (
            sample(samples, "flowtrap_templates_learned_total", exporter=exporter) > 0
        )
    assert sample(samples, "flowtrap_findings_total", detector=CUPS) >= 4
    assert sample(samples, "flowtrap_events_total", detector=CUPS) == 4
    assert sample(samples, "flowtrap_events_pending") == 0
    assert sample(samples, "flowtrap_output_dropped_total", output=str(events)) == 0
    assert sample(samples, "flowtrap_output_queue_depth", output=str(events)) == 0
    assert sample(samples, "flowtrap_datagrams_received_total") > 0
    listen = f"127.0.0.1:{collector.port}"
    assert ("flowtrap_socket_receive_drops_total", (("listen", listen),)) in samples
    assert sample(samples, "flowtrap_socket_receive_buffer_bytes", listen=listen) > 0
    assert sample(samples, "process_resident_memory_bytes") > 0
    assert health == (200, "alive\n")
    assert ready == (200, "ready\n")


@pytest.mark.exporter
def test_metrics_after_softflowd_exports_the_lab_capture(tmp_path: Path) -> None:
    """A real exporter's traffic shows up in the scraped counters."""
    require_tool("softflowd")
    events = tmp_path / "events.jsonl"
    with CollectorProcess(events, ["--metrics", "127.0.0.1:0"]) as collector:
        address = metrics_address(collector.started)
        run_exporter("softflowd", FIXTURES / "lab.pcap", 9, collector.port, tmp_path)
        samples = scrape_until(
            address,
            lambda s: sample(s, "flowtrap_findings_total", detector=CUPS) >= 2,
            what="the egress findings",
        )
        collector.stop()

    assert sample(samples, "flowtrap_export_packets_total", exporter="127.0.0.1") > 0
    assert sample(samples, "flowtrap_flow_records_total", exporter="127.0.0.1") >= 11
    assert sample(samples, "flowtrap_templates_learned_total", exporter="127.0.0.1") > 0
    errors = [k for k in samples if k[0] == "flowtrap_decode_errors_total"]
    assert errors == []


def test_kernel_receive_drops_for_flowtraps_sockets_are_exported() -> None:
    """Datagrams the kernel dropped on a full buffer are counted per socket."""
    pipeline = make_pipeline(Config(), Outputs([], ECS), Networks())
    listener = Listener(["127.0.0.1:0"], 65_536, pipeline.feed)
    loop = asyncio.new_event_loop()
    try:
        # Bound and registered, but the loop never runs: nothing reads.
        listener.start(loop)
        host, port = listener.sockets[0].getsockname()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(2000):
                sender.sendto(b"\x00" * 1000, (host, port))
        registry = registry_for(CollectorMetrics(pipeline, listener))
        text = generate_latest(registry).decode()
        (stats,) = listener.socket_stats()
    finally:
        for sock in listener.sockets:
            loop.remove_reader(sock.fileno())
            sock.close()
        loop.close()

    assert stats.drops > 0
    assert stats.queued_bytes > 0
    # Nothing was read, so nothing waits in flowtrap's own backlog.
    assert "flowtrap_backlog_bytes 0.0" in text
    assert "flowtrap_backlog_pauses_total 0.0" in text
    line = f'flowtrap_socket_receive_drops_total{{listen="127.0.0.1:{port}"}}'
    assert f"{line} {float(stats.drops)}" in text


def test_healthz_fails_when_the_loop_stops_ticking() -> None:
    """A stalled event loop makes /healthz answer 503; readiness is separate."""
    pipeline = make_pipeline(Config(), Outputs([], ECS), Networks())
    health = Health(stale_after=0.0)
    server = MetricsServer(
        "127.0.0.1:0", registry_for(CollectorMetrics(pipeline)), health
    )
    server.start()
    try:
        address = server.address()
        stalled = http_get(f"http://{address}/healthz")
        not_ready = http_get(f"http://{address}/readyz")
        missing = http_get(f"http://{address}/nothing")
    finally:
        server.stop()

    assert stalled == (503, "stalled\n")
    assert not_ready == (503, "not ready\n")
    assert missing[0] == 404


def test_counts_are_kept_per_exporter_and_share_one_label_past_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Per-exporter counts are capped; counts outside a packet name no exporter."""
    monkeypatch.setattr(stats_module, "MAX_LABELLED_EXPORTERS", 3)
    stats = Stats()
    for exporter in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"):
        stats.begin(exporter)
        stats.add("export_packets")
        stats.end()
    stats.add("templates_expired", 2, exporter="127.0.0.2")
    stats.add("exporters_expired")

    assert stats.counts["export_packets"] == 4
    assert stats.by_exporter["127.0.0.2"] == {
        "export_packets": 1,
        "templates_expired": 2,
    }
    assert stats.by_exporter["127.0.0.3"] == {"export_packets": 1}
    assert stats.by_exporter[OTHER_EXPORTERS] == {"export_packets": 2}
    assert stats.by_exporter[""] == {"exporters_expired": 1}
    assert len(stats.by_exporter) == 4


def test_idle_metrics_clients_cannot_pile_up_threads() -> None:
    """Fifty clients that never send a request hold at most a few threads."""
    import threading
    import time

    pipeline = make_pipeline(Config(), Outputs([], ECS), Networks())
    server = MetricsServer(
        "127.0.0.1:0", registry_for(CollectorMetrics(pipeline)), Health()
    )
    server.start()
    before = threading.active_count()
    host, port = server.address().rsplit(":", 1)
    idle = []
    try:
        for _ in range(50):
            client = socket.create_connection((host, int(port)))
            client.sendall(b"GET /metrics HTTP/1.1\r\n")
            idle.append(client)
        # Give the server time to accept them all before counting.
        time.sleep(1.0)
        grown = threading.active_count() - before
    finally:
        for client in idle:
            client.close()
        server.stop()
    assert grown <= 8


def test_receive_buffer_beyond_rmem_max_is_forced_as_root() -> None:
    """With CAP_NET_ADMIN the buffer asked for is granted past net.core.rmem_max."""
    if os.geteuid() != 0:
        pytest.skip("needs root (CAP_NET_ADMIN)")
    wanted = 2 * int(Path("/proc/sys/net/core/rmem_max").read_text())
    sock = open_socket("127.0.0.1:0", wanted)
    try:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 2 * wanted
    finally:
        sock.close()


def test_a_capped_receive_buffer_is_reported_with_the_fix() -> None:
    """Without CAP_NET_ADMIN a capped buffer logs how to raise the cap."""
    require_tool("setpriv")
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to another user")
    wanted = 2 * int(Path("/proc/sys/net/core/rmem_max").read_text())
    code = (
        "import logging; logging.basicConfig(); "
        "from collector.sockets import open_socket; "
        f"open_socket('127.0.0.1:0', {wanted}).close()"
    )
    result = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-c",
            code,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "raise net.core.rmem_max" in result.stderr
