"""Three ``flowtrap run`` nodes joined by a real nats-server, all on 127.0.0.1.

Each node decodes only what is exported to it; the nodes share the flow
records their detectors wanted through JetStream and claim every event id in
a key-value bucket, so together they write what one collector would write.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.cluster import decode, encode
from tests.nats import NatsServer
from tests.ops import metrics_address, sample, scrape, wait_for
from tests.packets import (
    FIVE_TUPLE_FIELDS,
    five_tuple,
    flowset,
    template_record,
    u16,
    u32,
)
from tests.test_detectors_cups import make_flow
from tools.runner import CollectorProcess, send_payloads

CALLBACK = "cups_browsed_callback"
FANOUT = "cups_browsed_internal_fanout"
PROBER = "203.0.113.10"
VICTIM = "10.1.0.5"
SCANNER = "10.1.0.9"
# A probe of VICTIM by PROBER, and the callback that answers it.
PROBE = five_tuple(PROBER, VICTIM, 40001, 631)
CALLBACK_FLOW = five_tuple(VICTIM, PROBER, 51000, 631, proto=6, pkts=8)


def export_packet(records: list[bytes], secs: int, sequence: int = 1) -> bytes:
    """One IPFIX message with the five-tuple template and the given records."""
    body = flowset(2, template_record(256, FIVE_TUPLE_FIELDS))
    body += flowset(256, b"".join(records))
    header = (
        u16(10)  # version
        + u16(16 + len(body))  # message length
        + u32(secs)  # export time: the records carry no times of their own
        + u32(sequence)  # sequence number
        + u32(0)  # observation domain id
    )
    return header + body


def send(port: int, packets: list[bytes]) -> None:
    """Send export packets to one node from 127.0.0.2."""
    asyncio.run(send_payloads(packets, port, "127.0.0.2"))


@contextmanager
def nodes(
    tmp_path: Path, url: str, count: int, detectors: str, workers: str = "1"
) -> Iterator[list[CollectorProcess]]:
    """Start ``count`` nodes joined through ``url``, each with metrics."""
    extra = ["--detectors", detectors, "--metrics", "127.0.0.1:0", "--cluster", url]
    extra += ["--workers", workers]
    with ExitStack() as stack:
        started = [
            stack.enter_context(CollectorProcess(tmp_path / f"node{i}.jsonl", extra))
            for i in range(count)
        ]
        for node in started:
            wait_for(lambda n=node: connected(n), what="node connected to nats")
        yield started


def connected(node: CollectorProcess) -> bool:
    """Return True while a node's NATS link is up."""
    samples = scrape(metrics_address(node.started))
    return sample(samples, "flowtrap_cluster_connected") == 1


def cluster_count(node: CollectorProcess, what: str) -> float:
    """Return one of a node's cluster counters."""
    samples = scrape(metrics_address(node.started))
    return sample(samples, "flowtrap_cluster_total", what=what)


def stop_all(started: list[CollectorProcess]) -> list[dict[str, Any]]:
    """Stop every node in turn; return every event written, all nodes together."""
    events: list[dict[str, Any]] = []
    for node in started:
        events += node.stop()
    return events


def by_rule(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """Return the events of one detector."""
    return [e for e in events if e["rule"]["name"] == name]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_probe_on_one_node_and_callback_on_another_raise_one_event(
    tmp_path: Path, workers: str
) -> None:
    """The probe goes to node A, the callback to node B: one callback event.

    With workers, what a node's workers decode is shared like its own.
    """
    now = int(time.time())
    probe, callback = PROBE, CALLBACK_FLOW
    server = NatsServer(tmp_path / "nats")
    with server, nodes(tmp_path, server.url, 2, CALLBACK, workers) as (a, b):
        send(a.port, [export_packet([probe], now)])
        send(b.port, [export_packet([callback], now + 1)])
        wait_for(
            lambda: (
                cluster_count(b, "received") >= 1 and cluster_count(a, "received") >= 1
            ),
            what="each node received the other's observation",
        )
        events = stop_all([a, b])

    callbacks = by_rule(events, CALLBACK)
    assert len(callbacks) == 1, callbacks
    assert callbacks[0]["source"]["ip"] == VICTIM
    assert callbacks[0]["destination"]["ip"] == PROBER
    assert "cluster stopped" in a.stderr + b.stderr
    assert "events_skipped=1" in a.stderr + b.stderr


def test_fanout_spread_over_three_nodes_raises_one_event(tmp_path: Path) -> None:
    """21 internal UDP/631 destinations, 7 per node: one fan-out event."""
    now = int(time.time())
    records = [
        five_tuple(SCANNER, f"10.2.0.{i + 1}", 40000 + i, 631) for i in range(21)
    ]
    server = NatsServer(tmp_path / "nats")
    with server, nodes(tmp_path, server.url, 3, FANOUT) as started:
        for index, node in enumerate(started):
            share = records[index::3]
            send(node.port, [export_packet(share, now)])
        wait_for(
            lambda: all(cluster_count(n, "received") >= 14 for n in started),
            what="every node received the others' observations",
        )
        events = stop_all(started)

    fanouts = by_rule(events, FANOUT)
    assert len(fanouts) == 1, fanouts
    assert fanouts[0]["source"]["ip"] == SCANNER


def test_nats_killed_and_restarted_mid_run_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    """Findings made while NATS is down are held and shared when it returns."""
    now = int(time.time())
    probe, callback = PROBE, CALLBACK_FLOW
    server = NatsServer(tmp_path / "nats")
    with server, nodes(tmp_path, server.url, 2, CALLBACK) as (a, b):
        server.kill()
        for node in (a, b):
            wait_for(lambda n=node: not connected(n), what="the node saw NATS go")
        send(a.port, [export_packet([probe], now)])
        send(b.port, [export_packet([callback], now + 1)])
        wait_for(
            lambda: cluster_count(a, "held") >= 1,
            what="node A holds the probe",
        )
        # The same port and store: JetStream finds its stream and consumers.
        server.start()
        wait_for(
            lambda: (
                cluster_count(b, "received") >= 1 and cluster_count(a, "received") >= 1
            ),
            timeout=30,
            what="held observations shared after the restart",
        )
        events = stop_all([a, b])

    callbacks = by_rule(events, CALLBACK)
    assert len(callbacks) == 1, callbacks
    assert "observations_unsent=0" in a.stderr
    assert "observations_unsent=0" in b.stderr


def test_observations_round_trip_whole() -> None:
    """What a node publishes is the flow record another node rebuilds."""
    flow = make_flow("10.1.0.5", "2001:db8::9", sampling=100).model_copy(
        update={"next_hop": ipaddress.ip_address("192.0.2.254"), "tcp_flags": 0x12}
    )
    flow.fields["e9.12235"] = "ff00"
    back = decode(encode(flow))
    assert back == flow
    assert back.packets_scaled == flow.packets_scaled == 300


def test_observations_with_impossible_times_are_refused() -> None:
    """A record placed in year 9999 never reaches a detector."""
    flow = make_flow("10.1.0.5", "203.0.113.9")
    data = orjson.loads(encode(flow))
    data["start"] = "9999-12-31T23:59:59Z"
    with pytest.raises(ValueError, match="1970-2100"):
        decode(orjson.dumps(data))


def test_a_node_with_a_longer_window_joins_and_lengthens_the_stream(
    tmp_path: Path,
) -> None:
    """The stream made by a node with a short window grows for a longer one."""
    now = int(time.time())
    probe, callback = PROBE, CALLBACK_FLOW
    base = ["--detectors", CALLBACK, "--metrics", "127.0.0.1:0"]
    server = NatsServer(tmp_path / "nats")
    with server, ExitStack() as stack:
        a = stack.enter_context(
            CollectorProcess(tmp_path / "a.jsonl", [*base, "--cluster", server.url])
        )
        wait_for(lambda: connected(a), what="node A connected")
        b = stack.enter_context(
            CollectorProcess(
                tmp_path / "b.jsonl",
                [*base, "--cluster", server.url, "--window", "3600"],
            )
        )
        wait_for(lambda: connected(b), what="node B connected")
        send(a.port, [export_packet([probe], now)])
        send(b.port, [export_packet([callback], now + 1)])
        wait_for(
            lambda: (
                cluster_count(a, "received") >= 1 and cluster_count(b, "received") >= 1
            ),
            what="each node received the other's observation",
        )
        stop_all([a, b])
    assert "cluster setup failed" not in a.stderr + b.stderr
    assert "cluster stream retention raised" in "".join(b.startup) + b.stderr
