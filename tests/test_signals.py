"""Signals sent to a running ``flowtrap run``: stop cleanly, reload on SIGHUP."""

from __future__ import annotations

import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.ops import (
    egress_packet,
    event_files,
    metrics_address,
    read_all_events,
    sample,
    scrape,
    wait_for,
)
from tests.packets import FIVE_TUPLE_FIELDS, five_tuple, flowset, ipfix, template_record
from tools.runner import CollectorProcess, send_payloads

CUPS = "cups_browsed_internal_external"


def findings(address: str) -> float:
    """Return the CUPS findings counted so far."""
    return sample(scrape(address), "flowtrap_findings_total", detector=CUPS)


def reloads(address: str, result: str) -> float:
    """Return the configuration reloads counted with a result."""
    return sample(scrape(address), "flowtrap_config_reloads_total", result=result)


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_stop_signal_closes_open_windows_and_writes_their_events(
    tmp_path: Path, signum: int, workers: str
) -> None:
    """A flow whose window is still open becomes an event on the way out."""
    events_path = tmp_path / "events.jsonl"
    extra = ["--metrics", "127.0.0.1:0", "--window", "3600", "--workers", workers]
    with CollectorProcess(events_path, extra) as collector:
        address = metrics_address(collector.started)
        await send_payloads([egress_packet()], collector.port)
        wait_for(lambda: findings(address) == 1, what="the finding")
        assert read_all_events(events_path) == []

        collector.signal(signum)
        wait_for(lambda: read_all_events(events_path), what="the event")
        events = collector.stop()

    assert len(events) == 1
    assert events[0]["source"]["ip"] == "10.1.0.5"
    assert "collector stopped" in collector.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sighup_reloads_allowlist_and_networks_and_starts_a_new_file(
    tmp_path: Path, workers: str
) -> None:
    """After SIGHUP a newly allowed exporter's flow, now egress, raises an event.

    With workers, the allowlist is applied where datagrams are received: the
    reload reaches every worker.
    """
    config = tmp_path / "flowtrap.toml"
    config.write_text(
        'allowed_exporters = ["127.0.0.2/32"]\ninternal_networks = ["192.168.0.0/16"]\n'
    )
    events_path = tmp_path / "events.jsonl"
    extra = ["--config", str(config), "--metrics", "127.0.0.1:0", "--workers", workers]
    with CollectorProcess(events_path, extra) as collector:
        address = metrics_address(collector.started)
        # Denied: 127.0.0.3 may not send yet.
        await send_payloads([egress_packet()], collector.port, "127.0.0.3")
        wait_for(
            lambda: sample(scrape(address), "flowtrap_datagrams_denied_total"),
            what="the denied datagram",
        )

        config.write_text(
            'allowed_exporters = ["127.0.0.3/32"]\ninternal_networks = ["10.0.0.0/8"]\n'
        )
        collector.signal(signal.SIGHUP)
        # Counted as applied only once every worker has the new allowlist:
        # the very next datagram from 127.0.0.3 is let in.
        wait_for(lambda: reloads(address, "applied") == 1, what="the reload")
        await send_payloads([egress_packet()], collector.port, "127.0.0.3")
        wait_for(
            lambda: sample(scrape(address), "flowtrap_datagrams_received_total") == 2,
            what="the second datagram",
        )
        assert sample(scrape(address), "flowtrap_datagrams_denied_total") == 1
        wait_for(lambda: findings(address) == 1, what="the finding")
        collector.stop()

    # The file begun at start got no event: the SIGHUP's new file replaced it.
    files = event_files(events_path)
    assert len(files) == 1
    events = read_all_events(events_path)
    assert len(events) == 1
    assert events[0]["observer"]["ip"] == ["127.0.0.3"]
    assert "configuration reloaded" in collector.stderr


async def test_sighup_with_a_broken_config_keeps_the_running_one(
    tmp_path: Path,
) -> None:
    """A reload that does not validate changes nothing and says why."""
    config = tmp_path / "flowtrap.toml"
    config.write_text('internal_networks = ["10.0.0.0/8"]\n')
    events_path = tmp_path / "events.jsonl"
    extra = ["--config", str(config), "--metrics", "127.0.0.1:0"]
    with CollectorProcess(events_path, extra) as collector:
        address = metrics_address(collector.started)
        config.write_text('internal_networks = ["10.0.0.0/33"]\n')
        collector.signal(signal.SIGHUP)
        wait_for(lambda: reloads(address, "refused") == 1, what="the refusal")
        await send_payloads([egress_packet()], collector.port)
        wait_for(lambda: findings(address) == 1, what="the finding")
        events = collector.stop()

    assert len(events) == 1
    assert len(event_files(events_path)) == 1
    assert "configuration not reloaded" in collector.stderr
    assert "internal_networks" in collector.stderr


def test_sigterm_stops_while_exporters_keep_sending(tmp_path: Path) -> None:
    """The drain at stop is bounded: a flood does not keep the collector alive."""
    stop = threading.Event()
    with CollectorProcess(tmp_path / "events.jsonl", timeout=30) as collector:
        port = collector.port

        def flood() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                while not stop.is_set():
                    for _ in range(200):
                        sender.sendto(egress_packet(), ("127.0.0.1", port))
                    time.sleep(0.001)

        thread = threading.Thread(target=flood, daemon=True)
        thread.start()
        try:
            time.sleep(1.0)
            started = time.monotonic()
            collector.stop()
            took = time.monotonic() - started
        finally:
            stop.set()
            thread.join(5)
    assert took < 10, f"stopping took {took:.1f} s under a flood"
    assert "collector stopped" in collector.stderr


def tcp_port(collector: CollectorProcess) -> int:
    """Return the IPFIX-over-TCP port from the collector's start-up lines."""
    for line in collector.startup:
        match = re.search(r"ipfix over tcp started listen=\['127\.0\.0\.1:(\d+)'", line)
        if match:
            return int(match.group(1))
    raise AssertionError("no 'ipfix over tcp started' line")


def send_tcp(port: int, source: str) -> None:
    """Send a template and a data record over one connection from ``source``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as connection:
        connection.bind((source, 0))
        connection.connect(("127.0.0.1", port))
        connection.sendall(TCP_TEMPLATE + TCP_DATA)


TCP_TEMPLATE = ipfix(flowset(2, template_record(256, FIVE_TUPLE_FIELDS)))
TCP_DATA = ipfix(flowset(256, five_tuple("10.0.0.1", "203.0.113.9", 5000, 631)))


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sighup_allowlist_reaches_ipfix_over_tcp(
    tmp_path: Path, workers: str
) -> None:
    """A reload that allows a new exporter and removes the old one does both
    for connections accepted afterwards, as for UDP."""
    config = tmp_path / "flowtrap.toml"
    config.write_text(
        'allowed_exporters = ["127.0.0.2/32"]\nlisten_tcp = ["127.0.0.1:0"]\n'
    )
    extra = ["--config", str(config), "--metrics", "127.0.0.1:0", "--workers", workers]
    with CollectorProcess(tmp_path / "events.jsonl", extra) as collector:
        address = metrics_address(collector.started)
        port = tcp_port(collector)

        def records(source: str) -> float:
            return sample(
                scrape(address), "flowtrap_flow_records_total", exporter=source
            )

        send_tcp(port, "127.0.0.2")
        wait_for(lambda: records("127.0.0.2") == 1, what="the allowed record")

        config.write_text(
            'allowed_exporters = ["127.0.0.3/32"]\nlisten_tcp = ["127.0.0.1:0"]\n'
        )
        collector.signal(signal.SIGHUP)
        wait_for(lambda: reloads(address, "applied") == 1, what="the reload")
        send_tcp(port, "127.0.0.3")
        wait_for(lambda: records("127.0.0.3") == 1, what="the newly allowed record")
        send_tcp(port, "127.0.0.2")
        send_tcp(port, "127.0.0.3")
        wait_for(lambda: records("127.0.0.3") == 2, what="the second record")
        assert records("127.0.0.2") == 1
        collector.stop()
