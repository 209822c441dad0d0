"""Real exporters over UDP on 127.0.0.1 to a running ``flowtrap run``.

softflowd and pmacctd read the repo's lab pcap and export it as NetFlow v5, v9
and IPFIX to a real collector process; the events that come out are exact.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import FIXTURES, require_tool
from tests.exporters import EXPORTER_CASES, run_exporter
from tools.runner import CollectorProcess

pytestmark = pytest.mark.exporter

IPV4_EGRESS = ("10.1.0.5", 40001, "203.0.113.10", 631)
IPV6_EGRESS = ("fd00:1::5", 40002, "2001:db8:feed::10", 631)


@pytest.mark.parametrize(
    ("exporter", "version"),
    EXPORTER_CASES,
    ids=[f"{name}-v{version}" for name, version in EXPORTER_CASES],
)
def test_lab_pcap_raises_events_for_egress_only(
    exporter: str, version: int, tmp_path: Path
) -> None:
    """Only the two egress UDP/631 conversations become events."""
    require_tool("softflowd" if exporter == "softflowd" else "pmacctd")
    with CollectorProcess(tmp_path / "events.jsonl") as collector:
        run_exporter(exporter, FIXTURES / "lab.pcap", version, collector.port, tmp_path)
        events = collector.stop()

    seen = {
        (
            e["source"]["ip"],
            e["source"]["port"],
            e["destination"]["ip"],
            e["destination"]["port"],
        )
        for e in events
    }
    # NetFlow v5 cannot carry IPv6, so the ULA conversation is absent there.
    expected = {IPV4_EGRESS} if version == 5 else {IPV4_EGRESS, IPV6_EGRESS}
    assert seen == expected
    assert len(events) == len(expected)
    for event in events:
        assert event["event"]["kind"] == "alert"
        assert event["rule"]["name"] == "cups_browsed_internal_external"
        assert event["network"]["transport"] == "udp"
        assert event["observer"]["ip"] == ["127.0.0.1"]
        assert event["flowtrap"]["flows"] == 1
    by_source = {e["source"]["ip"]: e for e in events}
    assert by_source["10.1.0.5"]["flowtrap"]["packets"] == 3
    assert "errors={}" in collector.stderr
