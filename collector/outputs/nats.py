"""Events published to a NATS subject, for central ingestion off the bus.

Each event is published as its JSON document, the same bytes as its line in an
event file without the newline, to the subject the target names
(``nats://HOST:PORT/SUBJECT``).

How a publish counts as delivered depends on the server, decided at every
connect:

- When a JetStream stream covers the subject, the event goes out with a
  JetStream publish and counts as delivered once the stream acknowledges it. It
  carries a ``Nats-Msg-Id`` (a hash of its bytes), so a publish repeated after a
  lost acknowledgement is dropped by the stream's duplicate window. Nothing is
  lost within the queue bound, whoever is reading.
- Otherwise it is a core NATS publish followed by a flush (a PING answered by a
  PONG), so it counts as delivered once the server has it. Core NATS keeps
  nothing: subscribers that are not connected at that moment never see it.

The client (nats-py, asyncio) runs on its own event loop thread; the output's
worker thread hands it one publish at a time and waits for the outcome, so the
queue, retries, drop counts and shutdown drain are those of every output. The
client does not reconnect on its own: a broken connection is closed, and the
next attempt connects again, so no publish sits unacknowledged in a client
buffer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client

from collector.outputs.base import QueuedOutput, QueueSettings, Undeliverable
from collector.outputs.message import Message, encode
from schemas.config import Target

log = logging.getLogger(__name__)

MSG_ID_HEADER = "Nats-Msg-Id"

# Errors that mean "the server is not answering now": retried.
_UNREACHABLE = (nats.errors.Error, TimeoutError, OSError)

T = TypeVar("T")


class NatsOutput(QueuedOutput):
    """Publishes each event to one NATS subject (JetStream when a stream has it)."""

    def __init__(self, target: Target, settings: QueueSettings, cap: int) -> None:
        """Remember the server and subject; nothing connects until the first event."""
        super().__init__(target.text, settings)
        host = f"[{target.host}]" if ":" in target.host else target.host
        self.url = f"nats://{host}:{target.port}"
        self.subject = target.subject
        self.cap = cap
        self.oversize = 0
        # The stream that covers the subject, found at connect; "" for core NATS.
        self.stream = ""
        self._client: Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None

    @property
    def jetstream(self) -> bool:
        """Return True while publishes are acknowledged by a JetStream stream."""
        return bool(self.stream)

    def open(self) -> None:
        """Start the client's event loop thread (no connection yet)."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._loop_thread = threading.Thread(
            target=loop.run_forever, name=f"output {self.name} loop", daemon=True
        )
        self._loop_thread.start()

    def encode(self, message: Message) -> bytes:
        """Encode as an event file's line would be, without its newline."""
        encoded = encode(message, self.cap - 1)
        if encoded.removed:
            self.trimmed += 1
        if encoded.oversize:
            self.oversize += 1
        return encoded.data

    def send(self, payload: bytes) -> None:
        """Publish one event and wait until the server (or stream) has it."""
        try:
            self._call(self._publish(payload))
        except Undeliverable:
            raise
        except _UNREACHABLE as error:
            raise ConnectionError(str(error) or type(error).__name__) from error

    def disconnect(self) -> None:
        """Close the connection; the next send opens a new one."""
        if self._client is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._close(), self.settings.connect_timeout)

    def close(self) -> None:
        """Close the connection and stop the loop thread."""
        self.disconnect()
        loop, self._loop = self._loop, None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if self._loop_thread is not None:
            self._loop_thread.join(5.0)
            self._loop_thread = None
        if not loop.is_running():
            loop.close()

    def _call(self, work: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the client's loop and wait for its result."""
        if self._loop is None:
            work.close()
            raise ConnectionError("output is closed")
        future = asyncio.run_coroutine_threadsafe(work, self._loop)
        limit = timeout or 2 * self.settings.connect_timeout + 1
        try:
            return future.result(limit)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError("NATS did not answer in time") from None

    async def _publish(self, payload: bytes) -> None:
        """Connect when needed, then publish (acknowledged, or flushed)."""
        client = self._client
        if client is None or not client.is_connected:
            client = await self._connect()
        if len(payload) > client.max_payload:
            raise Undeliverable(
                f"event of {len(payload)} bytes exceeds the server's max_payload"
            )
        timeout = self.settings.connect_timeout
        if self.stream:
            msg_id = hashlib.sha256(payload).hexdigest()
            await client.jetstream().publish(
                self.subject,
                payload,
                timeout=timeout,
                stream=self.stream,
                headers={MSG_ID_HEADER: msg_id},
            )
        else:
            await client.publish(self.subject, payload)
            await client.flush(timeout=max(1, round(timeout)))

    async def _connect(self) -> Client:
        """Open a connection and find whether a stream covers the subject."""
        await self._close()
        client = await nats.connect(
            self.url,
            name="flowtrap-events",
            connect_timeout=self.settings.connect_timeout,
            allow_reconnect=False,
            # nats-py reads 0 as "retry forever"; 1 makes two attempts.
            max_reconnect_attempts=1,
            reconnect_time_wait=0.1,
            error_cb=self._quiet,
            disconnected_cb=self._nothing,
            closed_cb=self._nothing,
        )
        try:
            stream = await self._find_stream(client)
        except BaseException:
            with contextlib.suppress(Exception):
                await client.close()
            raise
        self._client = client
        if stream != self.stream or not self.connected:
            log.info(
                "events to nats",
                extra={
                    "output": self.name,
                    "stream": stream or "-",
                    "mode": "jetstream" if stream else "core",
                },
            )
        self.stream = stream
        return client

    async def _find_stream(self, client: Client) -> str:
        """Return the stream that covers the subject, or "" when none does."""
        try:
            return await client.jetstream(
                timeout=self.settings.connect_timeout
            ).find_stream_name_by_subject(self.subject)
        except nats.js.errors.NotFoundError:
            return ""
        except nats.errors.NoRespondersError:
            # The server runs without JetStream.
            return ""
        except nats.js.errors.ServiceUnavailableError:
            return ""

    async def _close(self) -> None:
        """Close the current connection, if any."""
        client, self._client = self._client, None
        if client is not None and not client.is_closed:
            with contextlib.suppress(Exception):
                await client.close()

    async def _quiet(self, error: Exception) -> None:
        """Log client errors at debug; the worker reports the outage."""
        log.debug("nats client error", extra={"output": self.name, "error": str(error)})

    async def _nothing(self) -> None:
        """Ignore connection state callbacks; sends find out for themselves."""
