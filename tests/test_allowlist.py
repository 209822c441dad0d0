"""The exporter allowlist: who may send export packets."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.allowlist import Allowlist
from tests.conftest import EXPORTS
from tests.ops import metrics_address, sample, scrape_until
from tools.runner import CollectorProcess, send_capture


def test_datagrams_from_outside_the_allowlist_are_dropped_and_counted(
    tmp_path: Path,
) -> None:
    """127.0.0.2 is allowed and raises events; 127.0.0.3 is dropped and counted."""
    events_path = tmp_path / "events.jsonl"
    extra = ["--allowed-exporters", "127.0.0.2/32", "--metrics", "127.0.0.1:0"]
    with CollectorProcess(events_path, extra) as collector:
        address = metrics_address(collector.started)
        sent = send_capture(EXPORTS / "softflowd-v9.pcap", collector.port, "127.0.0.3")
        send_capture(EXPORTS / "softflowd-v9.pcap", collector.port, "127.0.0.2")
        samples = scrape_until(
            address,
            lambda s: sample(s, "flowtrap_datagrams_received_total") >= 2 * sent,
            what="every datagram read",
        )
        events = collector.stop()

    assert sample(samples, "flowtrap_datagrams_denied_total") == sent
    exporters = {
        dict(labels).get("exporter")
        for name, labels in samples
        if name == "flowtrap_export_packets_total"
    }
    assert exporters == {"127.0.0.2"}
    assert events
    assert {ip for e in events for ip in e["observer"]["ip"]} == {"127.0.0.2"}
    assert "not an allowed exporter" in collector.stderr
    assert "exporter=127.0.0.3" in collector.stderr
    assert "any host may send" not in collector.stderr


def test_without_an_allowlist_a_warning_says_once_that_any_host_may_send(
    tmp_path: Path,
) -> None:
    """The open collector is flagged at start, once."""
    with CollectorProcess(tmp_path / "events.jsonl") as collector:
        send_capture(EXPORTS / "softflowd-v9.pcap", collector.port, "127.0.0.3")
        events = collector.stop()

    assert events
    assert collector.stderr.count("any host may send") == 1


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.2", True),
        ("127.0.0.3", False),
        ("10.20.30.40", True),
        ("10.21.0.1", False),
        ("::ffff:127.0.0.2", True),
        ("2001:db8::1", True),
        ("2001:db9::1", False),
        ("not an address", False),
    ],
)
def test_allowlist_matches_addresses_by_network(address: str, allowed: bool) -> None:
    """IPv4, IPv6 and IPv4-mapped IPv6 sources are matched by CIDR."""
    allowlist = Allowlist(["127.0.0.2/32", "10.20.0.0/16", "2001:db8::/32"])
    assert allowlist.permits(address) is allowed
    # The remembered verdict agrees with the first one.
    assert allowlist.permits(address) is allowed
