"""Events published to NATS (``--events nats://HOST:PORT/SUBJECT``), real server.

Without a stream on the subject events go out as core NATS publishes (each
flushed); with one, as JetStream publishes the stream acknowledges, so a
server that restarts loses nothing within the queue bound.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import orjson
from nats.js.api import StorageType

from collector.capture import read_capture
from collector.outputs.base import QueueSettings
from collector.outputs.formats import ECS
from collector.outputs.message import Message
from collector.outputs.nats import NatsOutput
from schemas.config import parse_target
from tests.conftest import EXPORTS
from tests.nats import NatsServer
from tests.ops import metrics_address, sample, scrape, wait_for
from tools.runner import CollectorProcess, send_capture, send_payloads

SUBJECT = "flowtrap.events"
STREAM = "EVENTS"
QUEUE = QueueSettings(size=50, retry_initial=0.05, retry_max=0.5, drain=10)
CAPTURE = EXPORTS / "softflowd-v9.pcap"


def message(number: int) -> Message:
    """A numbered message shaped like an ECS event."""
    document: dict[str, Any] = {
        "@timestamp": "2026-01-01T00:00:00Z",
        "n": number,
        "tags": [],
        "flowtrap": {"sample": []},
    }
    return Message(
        document, datetime.now(UTC), 47, "cups_browsed_internal_external", ECS
    )


def nats_output(server: NatsServer, queue: QueueSettings = QUEUE) -> NatsOutput:
    """A NATS output publishing to SUBJECT on the test server."""
    return NatsOutput(parse_target(f"{server.url}/{SUBJECT}"), queue, 65536)


def add_stream(server: NatsServer) -> None:
    """Create a file-backed stream that takes SUBJECT."""

    async def create() -> None:
        client = await nats.connect(server.url)
        try:
            await client.jetstream().add_stream(
                name=STREAM, subjects=[SUBJECT], storage=StorageType.FILE
            )
        finally:
            await client.close()

    asyncio.run(create())


def stream_messages(server: NatsServer) -> list[bytes]:
    """Return every message the stream holds, in order."""

    async def read() -> list[bytes]:
        client = await nats.connect(server.url)
        try:
            js = client.jetstream()
            info = await js.stream_info(STREAM)
            first, last = info.state.first_seq, info.state.last_seq
            return [
                (await js.get_msg(STREAM, seq)).data or b""
                for seq in range(first, last + 1)
                if info.state.messages
            ]
        finally:
            await client.close()

    return asyncio.run(read())


def numbers(payloads: list[bytes]) -> list[int]:
    """Return the message numbers of published payloads."""
    return [orjson.loads(p)["n"] for p in payloads]


def lines(path: Path) -> list[bytes]:
    """Return an event file's lines, without their newlines."""
    return [line for line in path.read_bytes().splitlines() if line]


async def test_without_a_stream_events_are_core_publishes(tmp_path: Path) -> None:
    """A subscriber sees every event, in order, as its JSON document."""
    with NatsServer(tmp_path / "nats") as server:
        client = await nats.connect(server.url)
        subscription = await client.subscribe(SUBJECT)
        output = nats_output(server)
        output.start()
        for number in range(5):
            output.submit(message(number))
        received = [(await subscription.next_msg(5)).data for _ in range(5)]
        await asyncio.to_thread(output.stop)
        await asyncio.to_thread(output.join)
        await client.close()

    assert numbers(received) == [0, 1, 2, 3, 4]
    assert received[0] == orjson.dumps(message(0).document)
    assert not output.jetstream
    assert output.sent == 5
    assert output.dropped == 0


def test_with_a_stream_a_restarted_server_loses_nothing_queued(
    tmp_path: Path,
) -> None:
    """Events queued while nats-server is down reach the stream once, in order."""
    server = NatsServer(tmp_path / "nats").start()
    output = nats_output(server)
    try:
        add_stream(server)
        output.start()
        for number in range(5):
            output.submit(message(number))
        wait_for(lambda: output.sent == 5, what="first events acknowledged")
        assert output.jetstream

        server.kill()
        for number in range(5, 25):
            output.submit(message(number))
        wait_for(lambda: output.retried >= 2, what="failed attempts")
        assert output.depth() > 0

        server.start()
        wait_for(lambda: output.sent == 25, what="queued events acknowledged")
        output.stop()
        output.join()
        received = stream_messages(server)
    finally:
        output.stop()
        output.join()
        server.kill()

    assert numbers(received) == list(range(25))
    assert output.dropped == 0


def test_a_full_queue_drops_new_events_and_counts_them(tmp_path: Path) -> None:
    """Past the queue bound events are dropped and counted; the rest arrive."""
    server = NatsServer(tmp_path / "nats").start()
    output = nats_output(server)
    try:
        add_stream(server)
        output.start()
        output.submit(message(0))
        wait_for(lambda: output.sent == 1, what="first event acknowledged")
        server.kill()
        # The next event is taken off the queue and retried...
        output.submit(message(1))
        wait_for(lambda: output.retried >= 1, what="a failed attempt")
        # ...so the queue holds QUEUE.size more, and the rest are dropped.
        for number in range(2, 2 + QUEUE.size + 7):
            output.submit(message(number))
        assert output.dropped == 7

        server.start()
        wait_for(lambda: output.sent == 2 + QUEUE.size, what="the queue delivered")
        received = stream_messages(server)
    finally:
        output.stop()
        output.join()
        server.kill()

    assert numbers(received) == list(range(2 + QUEUE.size))


def test_an_unreachable_server_at_shutdown_drops_after_the_drain(
    tmp_path: Path,
) -> None:
    """With nothing listening, the drain time bounds shutdown; losses counted."""
    server = NatsServer(tmp_path / "nats")  # never started: nothing listens
    no_drain = QueueSettings(retry_initial=0.05, retry_max=0.2, drain=0.5)
    output = nats_output(server, no_drain)
    output.start()
    for number in range(3):
        output.submit(message(number))
    wait_for(lambda: output.retried >= 1, what="a failed attempt")
    output.stop()
    output.join()
    assert output.sent == 0
    assert output.dropped == 3


async def test_flowtrap_run_publishes_the_events_it_writes_to_a_file(
    tmp_path: Path,
) -> None:
    """`--events nats://...` and a file: the same bytes on NATS as in the file."""
    payloads = [datagram.data for datagram in read_capture(CAPTURE)]
    with NatsServer(tmp_path / "nats") as server:
        client = await nats.connect(server.url)
        subscription = await client.subscribe(SUBJECT)
        await client.flush()
        events_path = tmp_path / "events.jsonl"
        extra = ["--events", f"{server.url}/{SUBJECT}"]
        with CollectorProcess(events_path, extra) as collector:
            await send_payloads(payloads, collector.port, "127.0.0.2")
            events = await asyncio.to_thread(collector.stop)
        received = [(await subscription.next_msg(5)).data for _ in events]
        await client.close()

    assert events
    assert received == lines(events_path)
    assert "mode=core" in collector.stderr


def test_flowtrap_run_keeps_events_across_a_nats_restart(tmp_path: Path) -> None:
    """nats-server restarts mid-run: the stream ends up with every event written."""
    config = tmp_path / "flowtrap.toml"
    config.write_text(
        "[output]\nretry_initial_seconds = 0.1\nretry_max_seconds = 0.5\n"
    )
    events_path = tmp_path / "events.jsonl"
    target = f"nats://127.0.0.1:{{}}/{SUBJECT}"
    server = NatsServer(tmp_path / "nats").start()
    try:
        add_stream(server)
        extra = ["--events", target.format(server.port), "--config", str(config)]
        extra += ["--metrics", "127.0.0.1:0"]
        with CollectorProcess(events_path, extra) as collector:
            address = metrics_address(collector.started)
            label = {"output": target.format(server.port)}

            def count(name: str) -> float:
                return sample(scrape(address), name, **label)

            send_capture(CAPTURE, collector.port, "127.0.0.2")
            wait_for(
                lambda: count("flowtrap_output_sent_total") >= 1,
                what="first events published",
            )
            server.kill()
            send_capture(CAPTURE, collector.port, "127.0.0.3")
            wait_for(
                lambda: count("flowtrap_output_retries_total") >= 2,
                what="publishes failing while nats-server is down",
            )
            server.start()
            collector.stop()
        received = stream_messages(server)
    finally:
        server.kill()

    written = lines(events_path)
    assert len(written) >= 2
    assert received == written
    assert "mode=jetstream" in collector.stderr
    assert "output unavailable" in collector.stderr
    assert "events dropped" not in collector.stderr
