"""A running collector keeps templates across a restart, and takes IPFIX over TCP."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.packets import FIVE_TUPLE_FIELDS, five_tuple, flowset, ipfix, template_record
from tools.runner import CollectorProcess, send_payloads

TEMPLATE = ipfix(flowset(2, template_record(256, FIVE_TUPLE_FIELDS)))
EGRESS = ipfix(flowset(256, five_tuple("10.1.0.5", "203.0.113.10", 40001, 631)))


def free_tcp_port() -> int:
    """Return a TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def send_tcp(port: int, *messages: bytes) -> None:
    """Send IPFIX messages over one TCP connection and close it."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    for message in messages:
        writer.write(message)
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.5)


def test_templates_learned_over_tcp_survive_a_restart(tmp_path: Path) -> None:
    """Run 1 learns the template over TCP; run 2 decodes UDP data at once."""
    state = tmp_path / "state.json"
    port = free_tcp_port()
    extra = ["--state-file", str(state), "--listen-tcp", f"127.0.0.1:{port}"]

    with CollectorProcess(tmp_path / "first.jsonl", extra) as first:
        asyncio.run(send_tcp(port, TEMPLATE, EGRESS))
        events = first.stop()
    assert [e["destination"]["ip"] for e in events] == ["203.0.113.10"]
    assert state.exists()

    with CollectorProcess(
        tmp_path / "second.jsonl", ["--state-file", str(state)]
    ) as second:
        asyncio.run(send_payloads([EGRESS], second.port))
        events = second.stop()
    assert [e["destination"]["ip"] for e in events] == ["203.0.113.10"]
    assert "state loaded" in second.stderr + second.started or events


@pytest.mark.parametrize("workers", [("2", "3"), ("3", "1"), ("1", "2")])
def test_templates_survive_a_change_in_the_number_of_workers(
    tmp_path: Path, workers: tuple[str, str]
) -> None:
    """Templates saved by one process layout decode data under another."""
    state = tmp_path / "state.json"
    exporters = [f"127.0.0.{n}" for n in range(2, 7)]
    before, after = workers

    def run(name: str, count: str, packets: list[bytes]) -> list[dict[str, Any]]:
        flags = ["--state-file", str(state), "--workers", count]
        with CollectorProcess(tmp_path / f"{name}.jsonl", flags) as collector:
            for exporter in exporters:
                asyncio.run(send_payloads(packets, collector.port, exporter))
            return collector.stop()

    # The packets' times are old, so a window may close and reopen between
    # exporters: count flows, not events.
    for name, count, packets in (
        ("first", before, [TEMPLATE, EGRESS]),
        ("second", after, [EGRESS]),
    ):
        events = run(name, count, packets)
        assert sum(e["flowtrap"]["flows"] for e in events) == len(exporters), name
        assert {ip for e in events for ip in e["observer"]["ip"]} == set(exporters)
