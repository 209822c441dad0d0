"""IPFIX over TCP (RFC 7011 §10.4): messages framed by their own length.

Each connection is one exporter. A message is its 16-byte header plus the rest
of the length the header declares; it is handed on exactly like a UDP datagram.
A header that is not IPFIX, or declares under 16 bytes, ends the connection:
without a valid length there is no way to find the next message.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable

from collector.capture import Datagram
from collector.stats import Stats
from schemas.config import parse_endpoint

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">HH")
HEADER_SIZE = 16
# Connections served at once; each costs a stream buffer (about 64 kB).
MAX_CONNECTIONS = 1024
# A connection that sends nothing for this long is closed.
IDLE_SECONDS = 600.0
# A message whose header arrived must be complete within this long.
MESSAGE_SECONDS = 30.0


class IpfixTcpServer:
    """Accepts IPFIX exporters over TCP and delivers each message."""

    def __init__(
        self,
        endpoints: list[str],
        deliver: Callable[[Datagram], None],
        stats: Stats,
        permits: Callable[[str], bool] | None = None,
    ) -> None:
        """Remember what to open; no I/O until start()."""
        self.endpoints = endpoints
        self.deliver = deliver
        self.stats = stats
        self.permits = permits
        self.denied = 0
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen on every endpoint."""
        for endpoint in self.endpoints:
            host, port = parse_endpoint(endpoint)
            server = await asyncio.start_server(self._accept, host, port)
            self._servers.append(server)
            log.info("listening for ipfix over tcp", extra={"endpoint": self.bound()})

    def bound(self) -> list[str]:
        """Return the addresses actually bound (ports resolved)."""
        addresses = []
        for server in self._servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                addresses.append(
                    f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                )
        return addresses

    @property
    def connections(self) -> int:
        """Return how many exporter connections are open."""
        return len(self._connections)

    async def stop(self) -> None:
        """Stop accepting, let open connections finish what they sent, close."""
        for server in self._servers:
            server.close()
        for task in list(self._connections):
            task.cancel()
        for server in self._servers:
            await server.wait_closed()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        self._servers.clear()

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Serve one exporter connection until it closes."""
        task = asyncio.current_task()
        peer = writer.get_extra_info("peername") or ("", 0)
        exporter, port = str(peer[0]), int(peer[1])
        if self.permits is not None and not self.permits(exporter):
            # Outside the exporter allowlist: refused before anything is read.
            self.denied += 1
            writer.close()
            return
        if task is None or len(self._connections) >= MAX_CONNECTIONS:
            self.stats.error(exporter, "tcp_connection_limit")
            writer.close()
            return
        self._connections.add(task)
        try:
            await self._read_messages(reader, exporter, port)
        except asyncio.CancelledError:
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _read_messages(
        self, reader: asyncio.StreamReader, exporter: str, port: int
    ) -> None:
        """Read length-framed messages until the exporter closes or breaks framing."""
        while True:
            try:
                header = await asyncio.wait_for(
                    reader.readexactly(HEADER_SIZE), IDLE_SECONDS
                )
            except asyncio.IncompleteReadError as error:
                if error.partial:
                    self.stats.error(exporter, "tcp_truncated")
                return
            except TimeoutError:
                self.stats.error(exporter, "tcp_idle")
                return
            version, length = _HEADER.unpack_from(header)
            if version != 10 or length < HEADER_SIZE:
                self.stats.error(exporter, "tcp_framing")
                return
            try:
                rest = await asyncio.wait_for(
                    reader.readexactly(length - HEADER_SIZE), MESSAGE_SECONDS
                )
            except asyncio.IncompleteReadError:
                self.stats.error(exporter, "tcp_truncated")
                return
            except TimeoutError:
                # A message that never completes would hold a connection slot.
                self.stats.error(exporter, "tcp_stalled")
                return
            self.deliver(Datagram(exporter, port, time.time(), header + rest))
