"""IPFIX over TCP: length-framed messages from a real TCP connection on 127.0.0.1."""

from __future__ import annotations

import asyncio

import pytest

from collector import tcp
from collector.capture import Datagram
from collector.decoder import Decoder
from collector.tcp import IpfixTcpServer
from tests.packets import FIVE_TUPLE_FIELDS, five_tuple, flowset, ipfix, template_record


async def serve(chunks: list[bytes]) -> tuple[Decoder, list[dict]]:
    """Send chunks over one connection and decode what the server delivers."""
    decoder = Decoder()
    records: list[dict] = []

    def deliver(datagram: Datagram) -> None:
        out = decoder.decode(datagram.data, datagram.exporter, datagram.port, 0.0)
        records.extend(b.layout.values(r) for b in out.flows for r in b.rows)

    server = IpfixTcpServer(["127.0.0.1:0"], deliver, decoder.stats)
    await server.start()
    port = int(server.bound()[0].rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
        await asyncio.sleep(0.01)
    writer.close()
    await writer.wait_closed()
    await reader.read()
    for _ in range(100):
        if not server.connections:
            break
        await asyncio.sleep(0.01)
    await server.stop()
    return decoder, records


TEMPLATE = ipfix(flowset(2, template_record(256, FIVE_TUPLE_FIELDS)))
DATA = ipfix(flowset(256, five_tuple("10.0.0.1", "203.0.113.9", 5000, 631)))


async def test_messages_split_across_segments_are_reassembled() -> None:
    """Two messages cut at arbitrary points still decode, one exporter."""
    stream = TEMPLATE + DATA + DATA
    chunks = [stream[:5], stream[5:30], stream[30:61], stream[61:]]
    decoder, records = await serve(chunks)
    assert [r["destinationTransportPort"] for r in records] == [631, 631]
    assert not decoder.stats.errors


async def test_bad_framing_ends_the_connection_and_is_counted() -> None:
    """A header that is not IPFIX closes the connection, keeping what came before."""
    decoder, records = await serve(
        [TEMPLATE + DATA + b"\x00\x09\x00\x10" + b"\x00" * 12]
    )
    assert len(records) == 1
    assert decoder.stats.errors["tcp_framing"] == 1


async def test_connection_closed_mid_message_is_counted() -> None:
    """A message cut off by the exporter closing is counted as truncated."""
    decoder, records = await serve([TEMPLATE + DATA[:20]])
    assert records == []
    assert decoder.stats.errors["tcp_truncated"] == 1


async def test_message_that_never_completes_frees_its_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A header promising more bytes than ever come is timed out and counted."""
    monkeypatch.setattr(tcp, "MESSAGE_SECONDS", 0.2)
    decoder = Decoder()
    server = IpfixTcpServer(["127.0.0.1:0"], lambda _: None, decoder.stats)
    await server.start()
    port = int(server.bound()[0].rsplit(":", 1)[1])
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(TEMPLATE[:16])
    await writer.drain()
    for _ in range(100):
        if decoder.stats.errors["tcp_stalled"]:
            break
        await asyncio.sleep(0.05)
    assert decoder.stats.errors["tcp_stalled"] == 1
    assert server.connections == 0
    writer.close()
    await server.stop()
