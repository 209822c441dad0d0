"""PROXY protocol v1/v2 headers: parsing, trust, counting, and the live listener."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.capture import read_capture
from collector.cli import main
from collector.proxy import (
    MALFORMED,
    MISSING,
    UNEXPECTED,
    UNTRUSTED,
    V2_SIGNATURE,
    ProxyHeaderError,
    ProxyProtocol,
    parse,
)
from tests.conftest import EXPORTS
from tests.ops import metrics_address, sample, scrape_until
from tests.packets import ipv4, u8, u16
from tools.runner import CollectorProcess, send_payloads

EXPORT = b"\x00\x0a\x00\x10 an export packet"


def v2(
    command: int = 0x21,
    family: int = 0x12,
    addresses: bytes = b"",
    tlvs: bytes = b"",
    length: int | None = None,
) -> bytes:
    """A v2 header (PROXY protocol spec §2.2) with its address block and TLVs."""
    block = addresses + tlvs
    return (
        V2_SIGNATURE  # 12-byte signature
        + u8(command)  # version 2 (high nibble), command (low nibble)
        + u8(family)  # address family (high nibble), transport (low nibble)
        + u16(len(block) if length is None else length)  # bytes that follow
        + block
    )


def inet(source: str, destination: str, sport: int, dport: int) -> bytes:
    """An AF_INET address block: addresses, then ports."""
    return (
        ipv4(source)  # source address
        + ipv4(destination)  # destination address
        + u16(sport)  # source port
        + u16(dport)  # destination port
    )


def tlv(kind: int, value: bytes) -> bytes:
    """One v2 TLV: type, length, value."""
    return u8(kind) + u16(len(value)) + value


def test_v1_tcp4_names_the_exporter_and_its_port() -> None:
    """nginx's form: the exporter is the source, the export packet follows CRLF."""
    line = b"PROXY TCP4 192.0.2.7 127.0.0.1 40462 2055\r\n"
    header = parse(line + EXPORT)
    assert (header.exporter, header.port) == ("192.0.2.7", 40462)
    assert header.length == len(line)


def test_v1_tcp6_address_is_written_canonically() -> None:
    """Two spellings of one IPv6 exporter must key the same templates."""
    line = b"PROXY TCP6 2001:DB8:0:0::7 ::1 9995 2055\r\n"
    assert parse(line + EXPORT).exporter == "2001:db8::7"


def test_v1_unknown_names_no_exporter() -> None:
    """UNKNOWN: the rest of the line is ignored and the sender stands for itself."""
    line = b"PROXY UNKNOWN whatever follows\r\n"
    header = parse(line + EXPORT)
    assert (header.exporter, header.length) == (None, len(line))


def test_v2_inet_dgram_names_the_exporter() -> None:
    """PROXY command, AF_INET over DGRAM: 12 address bytes."""
    data = v2(0x21, 0x12, inet("192.0.2.9", "127.0.0.1", 4739, 2055)) + EXPORT
    header = parse(data)
    assert (header.exporter, header.port) == ("192.0.2.9", 4739)
    assert data[header.length :] == EXPORT


def test_v2_inet6_stream_names_the_exporter() -> None:
    """AF_INET6 over STREAM: 36 address bytes."""
    addresses = (
        bytes.fromhex("20010db8000000000000000000000009")  # source address
        + bytes(15)
        + b"\x01"  # destination address ::1
        + u16(9996)  # source port
        + u16(2055)  # destination port
    )
    header = parse(v2(0x21, 0x21, addresses) + EXPORT)
    assert (header.exporter, header.port) == ("2001:db8::9", 9996)


def test_v2_tlvs_are_skipped_by_their_length() -> None:
    """TLVs (here ALPN and a NOOP) are walked, not read."""
    tlvs = tlv(0x01, b"h2") + tlv(0x04, bytes(5))
    data = v2(0x21, 0x12, inet("192.0.2.9", "127.0.0.1", 1, 2), tlvs) + EXPORT
    assert data[parse(data).length :] == EXPORT


@pytest.mark.parametrize(
    ("command", "family", "addresses"),
    [
        pytest.param(0x20, 0x12, inet("192.0.2.9", "127.0.0.1", 1, 2), id="local"),
        pytest.param(0x20, 0x00, b"", id="local-unspec"),
        pytest.param(0x21, 0x00, b"", id="proxy-unspec"),
    ],
)
def test_v2_local_or_unspec_names_no_exporter(
    command: int, family: int, addresses: bytes
) -> None:
    """The balancer's own traffic: addresses, if any, are skipped."""
    data = v2(command, family, addresses) + EXPORT
    header = parse(data)
    assert header.exporter is None
    assert data[header.length :] == EXPORT


V1 = b"PROXY TCP4 192.0.2.7 127.0.0.1 40462 2055\r\n"
MALFORMED_HEADERS = [
    pytest.param(V2_SIGNATURE + b"\x21\x12", "v2 header cut short", id="v2-short"),
    pytest.param(v2(0x11), "v2 version is not 2", id="v2-version-1"),
    pytest.param(v2(0x22), "neither LOCAL nor PROXY", id="v2-command-2"),
    pytest.param(v2(length=13), "runs past the datagram", id="v2-length-past-end"),
    pytest.param(v2(0x21, 0x31, bytes(216)), "AF_UNIX", id="v2-unix"),
    pytest.param(v2(0x21, 0x13, bytes(12)), "unknown", id="v2-transport-3"),
    pytest.param(v2(0x21, 0x42, bytes(12)), "unknown", id="v2-family-4"),
    pytest.param(v2(0x21, 0x12, bytes(11)), "shorter than", id="v2-inet-short"),
    pytest.param(v2(0x21, 0x22, bytes(12)), "shorter than", id="v2-inet6-as-inet"),
    pytest.param(
        v2(0x21, 0x12, bytes(12), b"\x04\x00"), "TLV header cut", id="v2-tlv-cut"
    ),
    pytest.param(
        v2(0x21, 0x12, bytes(12), b"\x04\x00\x09abc"),
        "TLV runs past",
        id="v2-tlv-long",
    ),
    pytest.param(b"PROXY TCP4 192.0.2.7 127.0.0.1 1 2", "no CRLF", id="v1-no-crlf"),
    pytest.param(b"PROXY TCP4 " + b"1" * 100 + b"\r\n", "no CRLF", id="v1-too-long"),
    pytest.param(b"PROXY TCP4 192.0.2.7 1 2\r\n", "six fields", id="v1-fields"),
    pytest.param(V1.replace(b" 2055", b"  2055"), "six fields", id="v1-two-spaces"),
    pytest.param(V1.replace(b"TCP4", b"UDP4"), "TCP4, TCP6", id="v1-udp4"),
    pytest.param(V1.replace(b"TCP4", b"TCP6"), "protocol", id="v1-tcp6-with-v4"),
    pytest.param(V1.replace(b"192.0.2.7", b"192.0.2.07"), "protocol", id="v1-zero"),
    pytest.param(V1.replace(b"192.0.2.7", b"192.0.2.\xff"), "protocol", id="v1-byte"),
    pytest.param(V1.replace(b"40462", b"65536"), "port", id="v1-port-big"),
    pytest.param(V1.replace(b"40462", b"040462"), "port", id="v1-port-zero"),
    pytest.param(V1.replace(b"40462", b"-1"), "port", id="v1-port-sign"),
    pytest.param(V1.replace(b"2055", b"x"), "port", id="v1-dport"),
]


@pytest.mark.parametrize(("data", "detail"), MALFORMED_HEADERS)
def test_malformed_headers_are_dropped_and_counted(data: bytes, detail: str) -> None:
    """Each bad header fails its own check, counts once, and raises nothing."""
    with pytest.raises(ProxyHeaderError, match=detail):
        parse(data)

    proxy = ProxyProtocol(["127.0.0.1/32"])
    assert proxy.unwrap(data, "127.0.0.1", 5000) is None
    assert proxy.errors == {MALFORMED: 1}
    assert proxy.senders == {("127.0.0.1", MALFORMED): 1}


def test_a_trusted_balancer_hands_on_the_named_exporter() -> None:
    """The header's exporter and port replace the sender's; the header goes."""
    proxy = ProxyProtocol(["127.0.0.1/32"])
    assert proxy.unwrap(V1 + EXPORT, "127.0.0.1", 5000) == ("192.0.2.7", 40462, EXPORT)
    assert not proxy.errors


def test_a_local_header_keeps_the_balancer_as_the_sender() -> None:
    """LOCAL names nobody; the datagram is the balancer's own."""
    proxy = ProxyProtocol(["127.0.0.1/32"])
    assert proxy.unwrap(v2(0x20, 0x00) + EXPORT, "127.0.0.1", 5000) == (
        "127.0.0.1",
        5000,
        EXPORT,
    )


def test_a_header_from_an_untrusted_sender_is_dropped_and_counted() -> None:
    """Only the configured balancers may name an exporter."""
    proxy = ProxyProtocol(["127.0.0.1/32"])
    assert proxy.unwrap(V1 + EXPORT, "127.0.0.3", 5000) is None
    assert proxy.unwrap(v2(0x20, 0x00) + EXPORT, "127.0.0.3", 5000) is None
    assert proxy.errors == {UNTRUSTED: 2}


def test_an_untrusted_sender_without_a_header_is_a_direct_exporter() -> None:
    """Exporters may still send straight to an instance beside the balancer."""
    proxy = ProxyProtocol(["127.0.0.1/32"])
    assert proxy.unwrap(EXPORT, "127.0.0.3", 5000) == ("127.0.0.3", 5000, EXPORT)
    assert not proxy.errors


def test_a_trusted_balancer_without_a_header_is_dropped_and_counted() -> None:
    """A balancer without ``proxy_protocol on`` would merge every exporter's
    templates under its own address."""
    proxy = ProxyProtocol(["127.0.0.1/32"])
    assert proxy.unwrap(EXPORT, "127.0.0.1", 5000) is None
    assert proxy.errors == {MISSING: 1}


def test_without_trusted_balancers_every_header_is_unexpected() -> None:
    """The option off: a header is an error however well formed."""
    proxy = ProxyProtocol()
    assert proxy.unwrap(V1 + EXPORT, "127.0.0.1", 5000) is None
    assert proxy.errors == {UNEXPECTED: 1}


def test_senders_remembered_for_the_log_are_capped() -> None:
    """A flood of spoofed senders is counted without growing the memory."""
    proxy = ProxyProtocol()
    for i in range(300):
        proxy.unwrap(V1, f"10.0.{i // 256}.{i % 256}", 1)
    assert proxy.errors[UNEXPECTED] == 300
    assert len(proxy.senders) == 256


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.sampled_from([V2_SIGNATURE, b"PROXY "]),
    rest=st.binary(max_size=300),
)
def test_mutated_headers_raise_nothing_but_a_header_error(
    prefix: bytes, rest: bytes
) -> None:
    """Random bytes after either signature parse or fail cleanly, within bounds."""
    try:
        header = parse(prefix + rest)
    except ProxyHeaderError:
        return
    assert 0 < header.length <= len(prefix + rest)
    assert 0 <= header.port <= 65_535


def test_the_flag_and_the_variable_set_the_trusted_balancers(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--proxy-protocol-from overrides FLOWTRAP_PROXY_PROTOCOL_FROM."""
    monkeypatch.setenv("FLOWTRAP_PROXY_PROTOCOL_FROM", "10.0.0.0/8")
    assert main(["check-config"]) == 0
    assert json.loads(capsys.readouterr().out)["proxy_protocol_from"] == ["10.0.0.0/8"]
    assert main(["check-config", "--proxy-protocol-from", "127.0.0.1,::1/128"]) == 0
    loaded = json.loads(capsys.readouterr().out)
    assert loaded["proxy_protocol_from"] == ["127.0.0.1/32", "::1/128"]
    assert main(["check-config", "--proxy-protocol-from", "nginx"]) == 2
    assert "proxy_protocol_from" in capsys.readouterr().err


def _send(payloads: list[bytes], port: int, source: str) -> int:
    """Send export packets from one loopback address."""
    return asyncio.run(send_payloads(payloads, port, source))


def test_live_headers_from_a_trusted_balancer_key_the_named_exporter(
    tmp_path: Path,
) -> None:
    """The allowlist, the metrics and observer.ip see 127.0.0.7, not the balancer.

    127.0.0.2 plays the balancer; it is not itself an allowed exporter.
    """
    exports = [d.data for d in read_capture(EXPORTS / "softflowd-v9.pcap")]
    named = [v2(0x21, 0x12, inet("127.0.0.7", "127.0.0.1", 9995, 2055)) + e
             for e in exports]  # fmt: skip
    refused = [V1.replace(b"192.0.2.7", b"127.0.0.8") + e for e in exports]
    extra = ["--proxy-protocol-from", "127.0.0.2/32", "--allowed-exporters"]
    extra += ["127.0.0.7/32", "--metrics", "127.0.0.1:0"]
    with CollectorProcess(tmp_path / "events.jsonl", extra) as collector:
        address = metrics_address(collector.started)
        sent = _send(named, collector.port, "127.0.0.2")
        _send(named, collector.port, "127.0.0.3")  # not a balancer
        _send(refused, collector.port, "127.0.0.2")  # names a denied exporter
        _send(exports, collector.port, "127.0.0.2")  # balancer without headers
        samples = scrape_until(
            address,
            lambda s: sample(s, "flowtrap_datagrams_received_total") >= 4 * sent,
            what="every datagram read",
        )
        events = collector.stop()

    exporters = {
        dict(labels).get("exporter")
        for name, labels in samples
        if name == "flowtrap_export_packets_total"
    }
    assert exporters == {"127.0.0.7"}
    decoded = sample(samples, "flowtrap_export_packets_total", exporter="127.0.0.7")
    assert decoded == sent
    for reason, count in [(UNTRUSTED, sent), (MISSING, sent), (MALFORMED, 0)]:
        assert sample(samples, "flowtrap_proxy_errors_total", reason=reason) == count
    assert sample(samples, "flowtrap_datagrams_denied_total") == sent
    assert "exporter=127.0.0.8" in collector.stderr
    assert {ip for e in events for ip in e["observer"]["ip"]} == {"127.0.0.7"}
    assert "reason=proxy_untrusted" in collector.stderr


def test_live_headers_without_the_option_are_never_trusted(tmp_path: Path) -> None:
    """A PROXY header is never a NetFlow version; without the option it is dropped."""
    exports = [d.data for d in read_capture(EXPORTS / "softflowd-v9.pcap")]
    extra = ["--metrics", "127.0.0.1:0"]
    with CollectorProcess(tmp_path / "events.jsonl", extra) as collector:
        address = metrics_address(collector.started)
        sent = _send([V1 + e for e in exports], collector.port, "127.0.0.2")
        samples = scrape_until(
            address,
            lambda s: (
                sample(s, "flowtrap_proxy_errors_total", reason=UNEXPECTED) >= sent
            ),
            what="every header counted",
        )
        events = collector.stop()

    assert sample(samples, "flowtrap_datagrams_received_total") == sent
    assert not [name for name, _ in samples if name == "flowtrap_export_packets_total"]
    assert sample(samples, "flowtrap_decode_errors_total") == 0
    assert events == []
    assert "reason=proxy_header_unexpected" in collector.stderr
