"""Syslog output against a real rsyslogd on 127.0.0.1: UDP, TCP and TLS.

rsyslog parses every message as RFC 5424 and writes its fields back as JSON,
so these tests see exactly what a SIEM behind rsyslog would.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.outputs.base import QueueSettings
from collector.outputs.formats import ECS, TRIMMED_TAG
from collector.outputs.message import Message
from collector.outputs.syslog import SyslogOutput, SyslogSettings
from schemas.config import parse_target
from tests.ops import egress_packet, wait_for
from tests.rsyslog import Rsyslog, TlsFiles, make_tls, require_rsyslog
from tools.runner import CollectorProcess, send_payloads

QUEUE = QueueSettings(size=50, retry_initial=0.05, retry_max=0.5, drain=10)
SEQUENCE = re.compile(r'sequenceId="(\d+)"')


def message(number: int, sample: int = 0) -> Message:
    """A numbered message shaped like an ECS event."""
    document: dict[str, Any] = {
        "@timestamp": "2026-01-01T00:00:00Z",
        "n": number,
        "tags": [],
        "flowtrap": {"sample": [{"flow": i, "pad": "y" * 300} for i in range(sample)]},
    }
    return Message(
        document, datetime.now(UTC), 47, "cups_browsed_internal_external", ECS
    )


def syslog_output(
    transport: str,
    port: int,
    tls: TlsFiles | None = None,
    queue: QueueSettings = QUEUE,
    **settings: Any,
) -> SyslogOutput:
    """A syslog output to 127.0.0.1:port."""
    target = parse_target(f"syslog+{transport}://127.0.0.1:{port}")
    options = SyslogSettings(
        hostname="collector-1", ca_file=tls.ca if tls else None, **settings
    )
    return SyslogOutput(target, queue, options)


def numbers(received: list[dict[str, Any]]) -> list[int]:
    """Return the message numbers rsyslog received, in arrival order."""
    return [orjson.loads(m["msg"])["n"] for m in received]


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    """A CA and a certificate for 127.0.0.1."""
    return make_tls(tmp_path / "tls")


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_rsyslog_parses_each_event_as_rfc5424(
    tmp_path: Path, tls: TlsFiles, transport: str
) -> None:
    """Header fields, structured data and the JSON body arrive as sent."""
    with Rsyslog(tmp_path / "rsyslog", transport, tls) as server:
        output = syslog_output(transport, server.port, tls)
        output.start()
        for number in range(5):
            output.submit(message(number))
        received = server.wait_for(5)
        output.stop()
        output.join()

    assert numbers(received) == [0, 1, 2, 3, 4]
    first = received[0]
    assert first["version"] == "1"
    assert first["pri"] == str(16 * 8 + 4)  # local0, warning (severity 47)
    assert first["hostname"] == "collector-1"
    assert first["app_name"] == "flowtrap"
    assert first["msgid"] == "cups_browsed_internal_external"
    assert first["procid"].isdigit()
    assert first["timestamp"].endswith("Z") or first["timestamp"].endswith("+00:00")
    assert [int(SEQUENCE.search(m["structured_data"])[1]) for m in received] == [
        1,
        2,
        3,
        4,
        5,
    ]
    assert 'origin software="flowtrap"' in first["structured_data"]
    assert output.sent == 5
    assert output.dropped == 0


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_receiver_that_goes_away_and_comes_back_loses_nothing_queued(
    tmp_path: Path, tls: TlsFiles, transport: str
) -> None:
    """Events queued while rsyslog is down arrive, in order, once it returns."""
    server = Rsyslog(tmp_path / "rsyslog", transport, tls).start()
    output = syslog_output(transport, server.port, tls)
    output.start()
    try:
        for number in range(5):
            output.submit(message(number))
        assert len(server.wait_for(5)) == 5

        server.stop()
        for number in range(5, 25):
            output.submit(message(number))
        wait_for(lambda: output.retried >= 2, what="failed attempts")
        assert output.depth() > 0

        server.start(server.port)
        received = server.wait_for(25)
    finally:
        output.stop()
        output.join()
        server.stop()

    assert numbers(received) == list(range(25))
    assert output.dropped == 0
    assert output.sent == 25


def test_a_full_queue_drops_new_events_and_counts_them(tmp_path: Path) -> None:
    """Past the queue bound events are dropped and counted; the rest arrive."""
    server = Rsyslog(tmp_path / "rsyslog", "tcp").start()
    output = syslog_output("tcp", server.port)
    output.start()
    try:
        output.submit(message(0))
        assert len(server.wait_for(1)) == 1
        server.stop()
        # The first event is taken off the queue and retried...
        output.submit(message(1))
        wait_for(lambda: output.retried >= 1, what="a failed attempt")
        # ...so the queue holds QUEUE.size more, and the rest are dropped.
        for number in range(2, 2 + QUEUE.size + 7):
            output.submit(message(number))
        assert output.dropped == 7

        server.start(server.port)
        received = server.wait_for(1 + 1 + QUEUE.size)
    finally:
        output.stop()
        output.join()
        server.stop()

    assert numbers(received) == list(range(2 + QUEUE.size))


def test_tls_refuses_a_server_its_ca_did_not_sign(tmp_path: Path) -> None:
    """With another CA, nothing is sent; the attempts are counted as retries."""
    server_tls = make_tls(tmp_path / "server")
    other = make_tls(tmp_path / "other")
    with Rsyslog(tmp_path / "rsyslog", "tls", server_tls) as server:
        no_drain = QueueSettings(retry_initial=0.05, retry_max=0.5, drain=0)
        output = syslog_output("tls", server.port, other, no_drain)
        output.start()
        output.submit(message(0))
        wait_for(lambda: output.retried >= 2, what="refused handshakes")
        output.stop()
        output.join()
        assert server.messages() == []
    assert output.sent == 0
    assert output.dropped == 1


def test_udp_events_are_trimmed_to_the_message_size(tmp_path: Path) -> None:
    """A large sample is cut so the whole message fits; the JSON stays whole."""
    with Rsyslog(tmp_path / "rsyslog", "udp") as server:
        output = syslog_output("udp", server.port, max_message_bytes=4096)
        output.start()
        output.submit(message(1, sample=40))
        (received,) = server.wait_for(1)
        output.stop()
        output.join()

    event = orjson.loads(received["msg"])
    assert event["n"] == 1
    assert 0 < len(event["flowtrap"]["sample"]) < 40
    assert TRIMMED_TAG in event["tags"]
    assert output.trimmed == 1


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_flowtrap_run_sends_events_to_syslog_and_a_file_at_once(
    tmp_path: Path, tls: TlsFiles, transport: str
) -> None:
    """`--events` twice: the same event reaches rsyslog and the event file."""
    require_rsyslog(tls=transport == "tls")
    config = tmp_path / "flowtrap.toml"
    config.write_text(f'[output.syslog]\nca_file = "{tls.ca}"\n')
    with Rsyslog(tmp_path / "rsyslog", transport, tls) as server:
        target = f"syslog+{transport}://127.0.0.1:{server.port}"
        events_path = tmp_path / "events.jsonl"
        extra = ["--events", target, "--config", str(config)]
        with CollectorProcess(events_path, extra) as collector:
            await send_payloads([egress_packet()], collector.port)
            events = collector.stop()
        received = server.wait_for(1)

    assert len(events) == 1
    assert len(received) == 1
    sent = orjson.loads(received[0]["msg"])
    assert sent["event"]["id"] == events[0]["event"]["id"]
    assert sent == events[0]
