"""Several collectors correlating as one through NATS JetStream.

Flow records stay on the collector (node) that decoded them. A node publishes
only the flow records some detector wanted ("observations", rare) to one
stream, and every node consumes every other node's observations into its own
detectors, so a probe decoded on one node and its callback decoded on another
correlate, and fan-out counts add up. Every node therefore closes the same
windows and computes the same deterministic event ids; the node that first
creates an event id in a key-value bucket writes the event, the others skip it.

The NATS client runs on its own thread and event loop, so the pipeline keeps
its synchronous calls: ``publish`` and ``claim`` only queue, ``take`` only
drains. While NATS is unreachable a node keeps detecting on its own flows,
holds observations and claims (bounded, counted) and sends them when the
server is back; JetStream drops a re-sent observation by its message id.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    PubAck,
    StorageType,
)
from nats.js.kv import KeyValue
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from collector.sinks import Sink
from detectors.events import flow_document
from schemas.event import Document
from schemas.flow import FlowRecord

log = logging.getLogger(__name__)

STREAM = "FLOWTRAP_OBSERVATIONS"
SUBJECT = "flowtrap.observations"
BUCKET = "flowtrap_events"
NODE_HEADER = "Flowtrap-Node"
MSG_ID_HEADER = "Nats-Msg-Id"

# Observations held while NATS is unreachable; one is about 600 bytes, so
# the cap is about 60 MB. Past it the oldest goes, counted.
MAX_HELD = 100_000
# Observations published before their acknowledgements are awaited.
PUBLISH_WINDOW = 256
# Events waiting for their claim; an event is about 3 kB.
MAX_CLAIMS = 10_000
# Received observations waiting for the pipeline to take them.
MAX_INBOX = 100_000
# Message ids remembered to drop a redelivered observation (about 100 bytes each).
MAX_SEEN = 200_000
# JetStream drops a re-sent message id within this long (its own cap is the
# stream's age limit).
DUPLICATE_WINDOW = 600.0

RETRY_SECONDS = 0.5
REQUEST_TIMEOUT = 2.0

# Errors that mean "NATS is not answering now": retried, never raised.
_UNREACHABLE = (nats.errors.Error, TimeoutError, OSError)

# The times a decoded flow may carry (collector.records clamps to these).
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(2100, 1, 1, tzinfo=UTC)

# The computed counters are derived on load, so they are not sent.
_DERIVED = {"packets_scaled", "bytes_scaled"}


def encode(flow: FlowRecord) -> bytes:
    """Serialise a flow record as compact JSON (its form in events' samples).

    Built from the same document events carry, about five times faster than
    pydantic's dump; every node publishes each flow its detectors want.
    """
    document = flow_document(flow)
    for name in _DERIVED:
        del document[name]
    return orjson.dumps(document)


def decode(data: bytes) -> FlowRecord:
    """Parse a flow record serialised by ``encode``, or raise ValueError.

    Times outside what a decoded flow can carry (1970 to 2100) are refused:
    whoever can publish to the bus must not park a window where it can
    never close.
    """
    flow = FlowRecord.model_validate_json(data)
    for moment in (flow.start, flow.end, flow.export_time):
        if moment is not None and not _EARLIEST <= moment <= _LATEST:
            raise ValueError("flow time outside 1970-2100")
    return flow


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """Where the cluster's NATS server is and how long it keeps state."""

    url: str
    # Covers the longest detector window plus its lateness: observations and
    # claimed event ids live this long.
    retention_seconds: float
    drain_seconds: float = 10.0
    node: str = field(default_factory=lambda: uuid.uuid4().hex[:16])


class Cluster:
    """One node's link to the others: observations out and in, event claims."""

    def __init__(self, settings: ClusterSettings) -> None:
        """Prepare the queues; nothing connects until start()."""
        self.settings = settings
        self.node = settings.node
        self.counters: Counter[str] = Counter()
        self.connected = False
        # Set once the stream, bucket and consumer are ready.
        self.joined = False
        self._lock = threading.Lock()
        self._sequence = 0
        self._held: deque[tuple[str, bytes]] = deque()
        self._claims: deque[tuple[Document, Callable[[Document], None]]] = deque()
        self._inbox: deque[FlowRecord] = deque()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._started_at = datetime.now(UTC)
        self._loop = asyncio.new_event_loop()
        self._wake: asyncio.Event | None = None
        self._closing = False
        self._deadline = 0.0
        self._thread = threading.Thread(
            target=self._loop.run_until_complete,
            args=(self._serve(),),
            name="flowtrap-cluster",
            daemon=True,
        )

    # The pipeline's side: called on the main thread, never blocks.

    def start(self) -> None:
        """Start the NATS thread; it connects (and reconnects) on its own."""
        self._thread.start()

    def publish(self, flow: FlowRecord) -> None:
        """Queue one local observation for every other node."""
        data = encode(flow)
        with self._lock:
            idle = not self._held
            self._sequence += 1
            self._held.append((f"{self.node}-{self._sequence}", data))
            if len(self._held) > MAX_HELD:
                self._held.popleft()
                self.counters["observations_dropped"] += 1
        # The sender checks the queue before it waits: one that holds
        # something already has it awake.
        if idle:
            self._poke()

    def claim(self, event: Document, write: Callable[[Document], None]) -> None:
        """Queue an event; ``write`` runs (on the NATS thread) if this node wins it."""
        with self._lock:
            self._claims.append((event, write))
            if len(self._claims) > MAX_CLAIMS:
                # Written unclaimed: a possible duplicate beats a lost event.
                old, old_write = self._claims.popleft()
                self.counters["events_unclaimed"] += 1
                old_write(old)
        self._poke()

    def claim_room(self) -> int:
        """Return how many more event claims may wait."""
        with self._lock:
            return MAX_CLAIMS - len(self._claims)

    def take(self) -> list[FlowRecord]:
        """Return the other nodes' observations received since the last call."""
        with self._lock:
            flows = list(self._inbox)
            self._inbox.clear()
        return flows

    def pending(self) -> tuple[int, int]:
        """Return observations and claims not yet sent."""
        with self._lock:
            return len(self._held), len(self._claims)

    def stop(self) -> None:
        """Send what is held within the drain time, then disconnect."""
        if not self._thread.is_alive():
            return
        self._closing = True
        self._deadline = self._loop.time() + self.settings.drain_seconds
        self._poke()
        self._thread.join(self.settings.drain_seconds + 5.0)
        with self._lock:
            unsent, claims = len(self._held), list(self._claims)
            self._claims.clear()
        self.counters["observations_unsent"] += unsent
        for event, write in claims:
            self.counters["events_unclaimed"] += 1
            write(event)
        log.info("cluster stopped", extra={"node": self.node, **self.counters})

    def _poke(self) -> None:
        """Wake the NATS thread's sender."""
        wake = self._wake
        if wake is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(wake.set)
            except RuntimeError:
                # The loop closed between the test and the call: nothing to wake.
                return

    # The NATS thread's side.

    async def _serve(self) -> None:
        """Connect, set up the stream and bucket, then send and receive."""
        self._wake = asyncio.Event()
        client = await self._connect()
        if client is None:
            return
        try:
            ready = await self._prepare(client.jetstream())
            if ready is None:
                return
            self.joined = True
            kv, subscription = ready
            receiver = asyncio.create_task(self._receive(subscription))
            await self._send(client.jetstream(), kv)
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiver
        finally:
            self.connected = False
            await client.close()

    async def _connect(self) -> Client | None:
        """Connect, retrying until it works or the node stops."""
        while not self._out_of_time():
            try:
                client = await nats.connect(
                    self.settings.url,
                    name=f"flowtrap-{self.node}",
                    connect_timeout=REQUEST_TIMEOUT,
                    reconnect_time_wait=RETRY_SECONDS,
                    max_reconnect_attempts=-1,
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                    error_cb=self._error,
                )
            except _UNREACHABLE:
                self.counters["connect_failures"] += 1
                await self._nap()
                continue
            await self._reconnected()
            return client
        return None

    async def _stream(self, js: JetStreamContext, retention: float) -> None:
        """Create the stream, or lengthen its retention to cover this node's.

        Nodes may start with different windows (a fleet being reconfigured):
        the stream keeps the longest retention any node needs, and a node
        never fails to join over it.
        """
        try:
            info = await js.stream_info(STREAM)
        except nats.js.errors.NotFoundError:
            await js.add_stream(
                name=STREAM,
                subjects=[SUBJECT],
                max_age=retention,
                duplicate_window=min(DUPLICATE_WINDOW, retention),
                storage=StorageType.FILE,
            )
            return
        if (info.config.max_age or 0) < retention:
            await js.update_stream(info.config.evolve(max_age=retention))
            log.info("cluster stream retention raised", extra={"seconds": retention})

    async def _bucket(self, js: JetStreamContext, retention: float) -> KeyValue:
        """Bind the event-id bucket, creating it if no node has."""
        try:
            return await js.key_value(BUCKET)
        except nats.js.errors.BucketNotFoundError:
            return await js.create_key_value(
                bucket=BUCKET, ttl=retention, storage=StorageType.FILE
            )

    async def _prepare(
        self, js: JetStreamContext
    ) -> tuple[KeyValue, JetStreamContext.PullSubscription] | None:
        """Create (or find) the stream, the bucket and this node's consumer."""
        retention = self.settings.retention_seconds
        start = self._started_at - timedelta(seconds=retention)
        while not self._out_of_time():
            try:
                await self._stream(js, retention)
                kv = await self._bucket(js, retention)
                subscription = await js.pull_subscribe(
                    SUBJECT,
                    durable=f"flowtrap-{self.node}",
                    stream=STREAM,
                    config=ConsumerConfig(
                        deliver_policy=DeliverPolicy.BY_START_TIME,
                        opt_start_time=start,
                        ack_policy=AckPolicy.EXPLICIT,
                        inactive_threshold=retention,
                    ),
                )
            except _UNREACHABLE as error:
                self.counters["setup_failures"] += 1
                log.warning("cluster setup failed", extra={"error": str(error)})
                await self._nap()
                continue
            return kv, subscription
        return None

    async def _send(self, js: JetStreamContext, kv: KeyValue) -> None:
        """Publish held observations, then settle claims, until stopped."""
        while True:
            with self._lock:
                observation = self._held[0] if self._held else None
                claim = self._claims[0] if self._claims and not observation else None
            if observation is None and claim is None:
                if self._closing:
                    return
                await self._idle()
                continue
            if self._out_of_time():
                return
            try:
                if observation is not None:
                    await self._publish(js)
                elif claim is not None:
                    await self._settle(kv, *claim)
            except _UNREACHABLE:
                self.counters["send_retries"] += 1
                await self._nap()

    async def _publish(self, js: JetStreamContext) -> None:
        """Publish the oldest held observations together; keep them until acked.

        Up to PUBLISH_WINDOW go out before the first acknowledgement is
        awaited (one round trip each cost a node most of its rate). A batch
        that fails is sent again whole: JetStream drops a repeat of an id.
        """
        with self._lock:
            batch = list(itertools.islice(self._held, PUBLISH_WINDOW))
        futures: list[asyncio.Future[PubAck]] = []
        try:
            for msg_id, data in batch:
                headers = {MSG_ID_HEADER: msg_id, NODE_HEADER: self.node}
                futures.append(
                    await js.publish_async(
                        SUBJECT,
                        data,
                        wait_stall=REQUEST_TIMEOUT,
                        stream=STREAM,
                        headers=headers,
                    )
                )
            acks = await asyncio.wait_for(asyncio.gather(*futures), REQUEST_TIMEOUT)
        finally:
            # An answer that never comes must not hold the client's slot.
            for future in futures:
                future.cancel()
        sent = {msg_id for msg_id, _ in batch}
        with self._lock:
            # By id: the oldest may have been dropped (held cap) meanwhile.
            while self._held and self._held[0][0] in sent:
                self._held.popleft()
        for ack in acks:
            self.counters[
                "observations_duplicate" if ack.duplicate else "published"
            ] += 1

    async def _settle(
        self, kv: KeyValue, event: Document, write: Callable[[Document], None]
    ) -> None:
        """Create the event's id in the bucket; write the event if this node did."""
        mine = self.node.encode()
        try:
            await kv.create(event["event"]["id"], mine)
            won = True
        except nats.js.errors.KeyWrongLastSequenceError:
            # A create that timed out may have succeeded: the value says whose.
            entry = await kv.get(event["event"]["id"])
            won = entry.value == mine
        with self._lock:
            self._claims.popleft()
        if won:
            self.counters["events_claimed"] += 1
            write(event)
        else:
            self.counters["events_skipped"] += 1

    async def _receive(self, subscription: JetStreamContext.PullSubscription) -> None:
        """Fetch every node's observations; keep the other nodes' ones."""
        while True:
            try:
                messages = await subscription.fetch(256, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            except _UNREACHABLE:
                await self._nap()
                continue
            for message in messages:
                self._accept(message.headers or {}, message.data)
                try:
                    await message.ack()
                except _UNREACHABLE:
                    # Redelivered later and then dropped by its id.
                    self.counters["ack_failures"] += 1

    def _accept(self, headers: dict[str, str], data: bytes) -> None:
        """Keep one received observation unless it is ours or a repeat."""
        if headers.get(NODE_HEADER) == self.node:
            self.counters["received_own"] += 1
            return
        msg_id = headers.get(MSG_ID_HEADER, "")
        if not msg_id:
            # Every node names its observations; one without a name is not
            # from a node (and would make every later one look repeated).
            self.counters["received_malformed"] += 1
            return
        if msg_id in self._seen:
            self.counters["received_duplicate"] += 1
            return
        self._seen[msg_id] = None
        if len(self._seen) > MAX_SEEN:
            self._seen.popitem(last=False)
        try:
            flow = decode(data)
        except ValueError:
            self.counters["received_malformed"] += 1
            return
        with self._lock:
            self._inbox.append(flow)
            if len(self._inbox) > MAX_INBOX:
                self._inbox.popleft()
                self.counters["received_dropped"] += 1
        self.counters["received"] += 1

    async def _idle(self) -> None:
        """Wait until there is something to send (or a second passes)."""
        if self._wake is None:
            return
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), 1.0)
        except TimeoutError:
            return

    async def _nap(self) -> None:
        """Wait before retrying."""
        await asyncio.sleep(RETRY_SECONDS)

    def _out_of_time(self) -> bool:
        """Return True once a stopping node has used up its drain time."""
        return self._closing and self._loop.time() >= self._deadline

    async def _disconnected(self) -> None:
        """Note that NATS went away; findings are held until it returns."""
        if self.connected:
            log.warning("cluster disconnected; holding findings")
        self.connected = False

    async def _reconnected(self) -> None:
        """Note that NATS is back; held findings go out now."""
        self.connected = True
        log.info("cluster connected", extra={"url": self.settings.url})
        self._poke()

    async def _error(self, error: Exception) -> None:
        """Count client errors; the client reconnects by itself."""
        self.counters["client_errors"] += 1

    def snapshot(self) -> dict[str, Any]:
        """Return the counters and queue depths, for metrics and logs."""
        held, claims = self.pending()
        return {**self.counters, "held": held, "claims_pending": claims}


class ClaimingSink:
    """A sink that writes an event only where this node claims its id first."""

    def __init__(self, inner: Sink, cluster: Cluster) -> None:
        """Wrap the node's own outputs; no I/O."""
        self.inner = inner
        self.cluster = cluster

    def room(self) -> int | None:
        """Return what the claim queue and the outputs behind it still take."""
        inner = getattr(self.inner, "room", None)
        rooms = [self.cluster.claim_room()]
        if inner is not None and (outputs := inner()) is not None:
            rooms.append(outputs)
        return min(rooms)

    def write(self, event: Document) -> None:
        """Queue the event's claim; never blocks."""
        self.cluster.claim(event, self.inner.write)

    def close(self) -> None:
        """Settle every claim (within the drain time), then close the outputs."""
        self.cluster.stop()
        self.inner.close()


def retention_for(detectors: Sequence[object], window: float, lateness: float) -> float:
    """Return how long the cluster keeps state: the longest window and its lateness.

    A detector's own window and late allowance count when its settings name
    them; so do the event windows and their lateness.
    """
    longest = window + lateness
    for detector in detectors:
        settings = getattr(detector, "settings", None)
        own = getattr(settings, "window_seconds", 0.0)
        late = getattr(settings, "late_seconds", 0.0)
        if isinstance(own, int | float) and isinstance(late, int | float):
            longest = max(longest, float(own) + float(late))
    return longest


class ClusterMetrics(Collector):
    """Reads the cluster's counters at scrape time."""

    def __init__(self, cluster: Cluster) -> None:
        """Keep the cluster; nothing is copied until a scrape."""
        self.cluster = cluster

    def collect(self) -> Iterator[Metric]:
        """Yield the cluster's counters and its link state."""
        counters = CounterMetricFamily(
            "flowtrap_cluster",
            "Cluster observations and event claims, by what happened.",
            labels=["what"],
        )
        for name, value in sorted(self.cluster.snapshot().items()):
            counters.add_metric([name], value)
        yield counters
        yield GaugeMetricFamily(
            "flowtrap_cluster_connected",
            "1 while the NATS server answers and this node has joined the "
            "stream and bucket.",
            value=int(self.cluster.connected and self.cluster.joined),
        )
