"""flowtrap behind a real nginx UDP load balancer, all on 127.0.0.1.

nginx's stream module hashes each exporter address to one of two ``flowtrap
run`` instances and puts a PROXY header in front of every export packet. The
instances must then key everything by the exporter the header names, and
between them find what one instance fed directly finds.
"""

from __future__ import annotations

import asyncio
import socket
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from collector.capture import read_capture
from collector.proxy import parse
from tests.conftest import EXPORT_CAPTURES, EXPORTS
from tests.nats import NatsServer
from tests.nginx import NginxBalancer
from tests.ops import (
    Samples,
    exporter_packets,
    fold_events,
    metrics_address,
    sample,
    scrape,
    scrape_until,
    wait_for,
)
from tests.test_detectors_cups import ALL as ALL_DETECTORS
from tools.runner import CollectorProcess, send_payloads

pytestmark = pytest.mark.exporter

EXPORTERS = {f"127.0.0.{i + 2}": name for i, name in enumerate(EXPORT_CAPTURES)}
EGRESS = "cups_browsed_internal_external"
CALLBACK = "cups_browsed_callback"
ALL = ",".join(ALL_DETECTORS)
# nginx hashes 8 exporters onto 2 instances; all on one happens 1 time in 128,
# and then the balancer is rebuilt on new ports rather than the test passing
# without having split anything.
ATTEMPTS = 3


def _payloads() -> dict[str, list[bytes]]:
    """Return every exporter's export packets, in capture order."""
    return {
        exporter: [d.data for d in read_capture(EXPORTS / name)]
        for exporter, name in EXPORTERS.items()
    }


def _send_all(payloads: dict[str, list[bytes]], port: int) -> None:
    """Send each exporter's export packets from its own address, one after another."""

    async def send() -> None:
        for exporter, packets in payloads.items():
            await send_payloads(packets, port, exporter)

    asyncio.run(send())


def _direct(
    tmp_path: Path, payloads: dict[str, list[bytes]], detectors: str
) -> list[dict[str, Any]]:
    """Feed one instance directly from every exporter address; return its events."""
    total = sum(len(p) for p in payloads.values())
    extra = ["--detectors", detectors, "--metrics", "127.0.0.1:0"]
    with CollectorProcess(tmp_path / "direct.jsonl", extra) as collector:
        address = metrics_address(collector.started)
        _send_all(payloads, collector.port)
        scrape_until(
            address,
            lambda s: sum(exporter_packets(s).values()) >= total,
            what="every export packet decoded",
        )
        return collector.stop()


def test_nginx_sends_a_v1_header_naming_the_exporter_over_udp(tmp_path: Path) -> None:
    """nginx 1.22 writes ``PROXY TCP4`` (v1 text) even for UDP; it parses."""
    backend = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    exporter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with backend, exporter:
        backend.bind(("127.0.0.1", 0))
        backend.settimeout(10)
        exporter.bind(("127.0.0.5", 0))
        exporter_port = exporter.getsockname()[1]
        with NginxBalancer(tmp_path / "nginx", [backend.getsockname()[1]]) as nginx:
            exporter.sendto(b"\x00\x0a export packet", ("127.0.0.1", nginx.port))
            data, sender = backend.recvfrom(65_535)

    line = f"PROXY TCP4 127.0.0.5 127.0.0.1 {exporter_port} {nginx.port}\r\n"
    assert data == line.encode() + b"\x00\x0a export packet"
    assert sender[0] == "127.0.0.1"
    header = parse(data)
    assert (header.exporter, header.port) == ("127.0.0.5", exporter_port)
    assert data[header.length :] == b"\x00\x0a export packet"


def _exchanged(addresses: list[str]) -> bool:
    """Return True once each node received every observation the other published."""
    found = [scrape(a) for a in addresses]
    published = [sample(s, "flowtrap_cluster_total", what="published") for s in found]
    received = [sample(s, "flowtrap_cluster_total", what="received") for s in found]
    return received == published[::-1]


def _balanced(
    prefix: Path, payloads: dict[str, list[bytes]], detectors: str, cluster: str
) -> tuple[list[Samples], list[list[dict[str, Any]]], str]:
    """Run nginx before two instances; return their scrapes, events and logs."""
    total = sum(len(p) for p in payloads.values())
    extra = ["--detectors", detectors, "--metrics", "127.0.0.1:0"]
    extra += ["--proxy-protocol-from", "127.0.0.1/32"]
    if cluster:
        extra += ["--cluster", cluster]
    first = CollectorProcess(prefix / "a.jsonl", extra)
    second = CollectorProcess(prefix / "b.jsonl", extra)
    with first, second:
        instances = (first, second)
        addresses = [metrics_address(c.started) for c in instances]
        with NginxBalancer(prefix / "nginx", [c.port for c in instances]) as nginx:
            _send_all(payloads, nginx.port)

            def decoded() -> bool:
                found = [exporter_packets(scrape(a)) for a in addresses]
                return sum(sum(f.values()) for f in found) >= total

            wait_for(decoded, what="every export packet decoded behind nginx")
            if cluster:
                wait_for(
                    lambda: _exchanged(addresses),
                    what="each node received the other's observations",
                )
            samples = [scrape(a) for a in addresses]
        events = [c.stop() for c in instances]
        logs = first.stderr + second.stderr
    return samples, events, logs


@pytest.mark.parametrize(
    ("detectors", "cluster"),
    [
        pytest.param(EGRESS, False, id="egress"),
        pytest.param(ALL, True, id="all-detectors-as-a-nats-cluster"),
    ],
)
def test_two_instances_behind_nginx_find_what_one_direct_instance_finds(
    tmp_path: Path, detectors: str, cluster: bool
) -> None:
    """Each exporter lands on one instance, named by its real address.

    Alone, each instance correlates only what lands on it, so only a detector
    that looks at one flow at a time (egress) can add up; joined as a cluster
    through NATS, the pair finds what one instance finds with every detector,
    the probe-then-callback and fan-out correlations included.
    """
    payloads = _payloads()
    direct = _direct(tmp_path, payloads, detectors)
    if cluster:
        assert {e["rule"]["name"] for e in direct} >= {EGRESS, CALLBACK}

    for attempt in range(ATTEMPTS):
        prefix = tmp_path / f"try{attempt}"
        with ExitStack() as stack:
            url = ""
            if cluster:
                url = stack.enter_context(NatsServer(prefix / "nats")).url
            samples, events, logs = _balanced(prefix, payloads, detectors, url)
        landed = [exporter_packets(s) for s in samples]
        if all(landed):
            break
    else:
        pytest.fail(f"nginx sent every exporter to one instance {ATTEMPTS} times")

    # Every exporter on exactly one instance, with all its export packets, and
    # the balancer itself never taken for an exporter.
    for exporter, packets in payloads.items():
        counts = [found.get(exporter, 0) for found in landed]
        assert sorted(counts) == [0, len(packets)], exporter
    assert set(landed[0]) | set(landed[1]) == set(EXPORTERS)
    assert not set(landed[0]) & set(landed[1])
    for scraped in samples:
        for reason in ("proxy_untrusted", "proxy_malformed", "proxy_header_missing"):
            assert sample(scraped, "flowtrap_proxy_errors_total", reason=reason) == 0
    assert "bad or unexpected proxy header" not in logs

    # observer.ip names the real exporters: alone, each in the instance it
    # landed on; in a cluster, a node also reports flows the other decoded.
    for mine, written in zip(landed, events, strict=True):
        observers = {ip for e in written for ip in e["observer"]["ip"]}
        assert observers <= (set(EXPORTERS) if cluster else set(mine))

    # Between them, the two find what one instance fed directly finds. Several
    # exporters send the same flows, so the direct instance's events each name
    # several observers: the folding has to add the split ones back up.
    assert len({ip for e in direct for ip in e["observer"]["ip"]}) > 1
    merged, expected = fold_events(events[0] + events[1]), fold_events(direct)
    if cluster:
        # Alone, both write an event for a window both saw (the same id: the
        # folding adds them up); a cluster writes each id once.
        ids = [e["event"]["id"] for e in events[0] + events[1]]
        assert len(ids) == len(set(ids)), "an event written by both nodes"
        # Three exporters send the same callback flow and the callback detector
        # counts a repeat once: which exporter's copy comes first is arrival
        # order, which two nodes do not share. What was found must agree; who
        # reported it first may not.
        for found in (*merged.values(), *expected.values()):
            del found["observers"]
    assert merged == expected
