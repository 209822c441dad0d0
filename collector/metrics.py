"""Prometheus metrics, ``/healthz`` and ``/readyz`` over HTTP.

Nothing is counted for the metrics: at each scrape a custom collector reads the
counters the collector already keeps (``Stats``, the pipeline's detector
counts, the listener and the outputs), so decoding pays nothing for them.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIEnvironment

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from collector.listener import Receiver
from collector.outputs import QueuedOutput
from collector.pipeline import Pipeline
from collector.proxy import REASONS
from schemas.config import parse_endpoint

log = logging.getLogger(__name__)

VERSION = "0.1.0"
# A loop that has not ticked for this long is reported unhealthy.
STALE_SECONDS = 15.0

# The decoder's counters, by their Stats name, each exported per exporter as
# flowtrap_NAME_total. Counters not listed here are exported the same way.
COUNTERS = {
    "export_packets": "Export packets (datagrams) decoded.",
    "flowsets": "Flowsets (v9 FlowSets, IPFIX Sets) walked.",
    "flow_records": "Flow records decoded.",
    "options_records": "Options records decoded.",
    "templates_learned": "Templates learned.",
    "templates_changed": "Templates redefined with different fields.",
    "templates_withdrawn": "Templates withdrawn by their exporter.",
    "templates_expired": "Templates dropped for not being refreshed.",
    "flowsets_held": "Data flowsets held until their template arrives.",
    "held_decoded": "Held data flowsets decoded once their template arrived.",
    "sequence_lost": "Export packets or records missing by sequence number.",
}
_NAME = re.compile(r"[^a-zA-Z0-9_]")


class Health:
    """Liveness (the loop still ticks), readiness (sockets open), and reloads."""

    def __init__(self, stale_after: float = STALE_SECONDS) -> None:
        """Start alive and not ready."""
        self.stale_after = stale_after
        self.ready = False
        self.reloads: Counter[str] = Counter()
        self._beat = time.monotonic()

    def beat(self) -> None:
        """Record that the event loop ran (each tick)."""
        self._beat = time.monotonic()

    def alive(self) -> bool:
        """Return True when the loop ticked recently."""
        return time.monotonic() - self._beat < self.stale_after


class CollectorMetrics(Collector):
    """Reads flowtrap's counters at scrape time."""

    def __init__(
        self,
        pipeline: Pipeline,
        listener: Receiver | None = None,
        outputs: Iterable[QueuedOutput] = (),
        health: Health | None = None,
    ) -> None:
        """Keep references to what is read; nothing is copied until a scrape."""
        self.pipeline = pipeline
        self.listener = listener
        self.outputs = list(outputs)
        self.health = health

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family."""
        yield InfoMetricFamily(
            "flowtrap_build", "flowtrap version.", {"version": VERSION}
        )
        if self.health is not None:
            reloads = CounterMetricFamily(
                "flowtrap_config_reloads",
                "Configuration reloads (SIGHUP), by result.",
                labels=["result"],
            )
            for result in ("applied", "refused"):
                reloads.add_metric([result], self.health.reloads[result])
            yield reloads
        yield from self._decoding()
        yield from self._detection()
        yield from self._outputs()
        if self.listener is not None:
            yield from self._sockets(self.listener)

    def _decoding(self) -> Iterator[Metric]:
        """Decoder counters and decode errors, by exporter."""
        stats = self.pipeline.stats
        # dict.copy runs in C under the GIL: a consistent snapshot even while
        # the event loop keeps counting.
        by_exporter = {
            exporter: dict.copy(counts)
            for exporter, counts in dict.copy(stats.by_exporter).items()
        }
        names = set(COUNTERS) | set(dict.copy(stats.counts))
        for name in sorted(names):
            family = CounterMetricFamily(
                f"flowtrap_{_NAME.sub('_', name)}",
                COUNTERS.get(name, f"Count of {name.replace('_', ' ')}."),
                labels=["exporter"],
            )
            for exporter, counts in sorted(by_exporter.items()):
                if name in counts:
                    family.add_metric([exporter], counts[name])
            yield family

        errors = CounterMetricFamily(
            "flowtrap_decode_errors",
            "Decode errors, by exporter and reason.",
            labels=["exporter", "reason"],
        )
        for (exporter, reason), count in sorted(
            dict.copy(stats.errors_by_exporter).items()
        ):
            errors.add_metric([exporter, reason], count)
        yield errors

    def _detection(self) -> Iterator[Metric]:
        """Findings, events and detector failures, by detector."""
        pipeline = self.pipeline
        names = [detector.rule.name for detector in pipeline.detectors]
        for metric, help_text, counts in (
            ("flowtrap_findings", "Findings, by detector.", pipeline.findings),
            ("flowtrap_events", "Events emitted, by detector.", pipeline.events),
            (
                "flowtrap_detector_errors",
                "Flow records a detector failed on.",
                pipeline.detector_errors,
            ),
        ):
            family = CounterMetricFamily(metric, help_text, labels=["detector"])
            snapshot: Counter[str] = Counter(dict.copy(counts))
            for name in sorted(set(names) | set(snapshot)):
                family.add_metric([name], snapshot[name])
            yield family
        yield GaugeMetricFamily(
            "flowtrap_events_pending",
            "Closed windows waiting to be written as events (a burst in progress).",
            value=len(pipeline.pending),
        )

    def _outputs(self) -> Iterator[Metric]:
        """Queue depth and delivery counts, by output."""
        depth = GaugeMetricFamily(
            "flowtrap_output_queue_depth", "Events waiting.", labels=["output"]
        )
        capacity = GaugeMetricFamily(
            "flowtrap_output_queue_capacity", "Queue bound.", labels=["output"]
        )
        connected = GaugeMetricFamily(
            "flowtrap_output_connected",
            "1 while the last delivery succeeded.",
            labels=["output"],
        )
        counters = {
            "sent": CounterMetricFamily(
                "flowtrap_output_sent", "Events delivered.", labels=["output"]
            ),
            "retried": CounterMetricFamily(
                "flowtrap_output_retries", "Failed attempts retried.", labels=["output"]
            ),
            "dropped": CounterMetricFamily(
                "flowtrap_output_dropped",
                "Events never delivered: queue full, too large, or drain timed out.",
                labels=["output"],
            ),
            "trimmed": CounterMetricFamily(
                "flowtrap_output_trimmed",
                "Events whose flow sample was cut to fit.",
                labels=["output"],
            ),
        }
        for output in self.outputs:
            label = [output.name]
            depth.add_metric(label, output.depth())
            capacity.add_metric(label, output.settings.size)
            connected.add_metric(label, 1 if output.connected else 0)
            for attribute, family in counters.items():
                family.add_metric(label, getattr(output, attribute))
        yield depth
        yield capacity
        yield connected
        yield from counters.values()

    def _sockets(self, listener: Receiver) -> Iterator[Metric]:
        """Datagrams received and denied; the kernel's drops per socket."""
        yield CounterMetricFamily(
            "flowtrap_datagrams_received",
            "Datagrams read from the listening sockets.",
            value=listener.received,
        )
        yield CounterMetricFamily(
            "flowtrap_datagrams_denied",
            "Datagrams dropped because their source is not an allowed exporter.",
            value=listener.denied,
        )
        proxy = CounterMetricFamily(
            "flowtrap_proxy_errors",
            "Datagrams dropped for their PROXY header: untrusted sender, malformed, "
            "unexpected (option off) or missing (from a trusted load balancer).",
            labels=["reason"],
        )
        backlog = listener.backlog()
        yield GaugeMetricFamily(
            "flowtrap_backlog_datagrams",
            "Datagrams read but not yet decoded (a burst being absorbed).",
            value=backlog.datagrams,
        )
        yield GaugeMetricFamily(
            "flowtrap_backlog_bytes",
            "Bytes of datagrams read but not yet decoded; reading pauses at "
            "backlog_bytes.",
            value=backlog.bytes,
        )
        yield CounterMetricFamily(
            "flowtrap_backlog_pauses",
            "Times reading paused because the backlog was full (the kernel's "
            "buffer then takes the traffic, and drops what it cannot hold).",
            value=backlog.pauses,
        )
        errors = Counter(dict.copy(listener.proxy.errors))
        for reason in REASONS:
            proxy.add_metric([reason], errors[reason])
        yield proxy
        drops = CounterMetricFamily(
            "flowtrap_socket_receive_drops",
            "Datagrams the kernel dropped because the receive buffer was full.",
            labels=["listen"],
        )
        queued = GaugeMetricFamily(
            "flowtrap_socket_receive_queue_bytes",
            "Bytes waiting in the socket's receive buffer.",
            labels=["listen"],
        )
        buffer = GaugeMetricFamily(
            "flowtrap_socket_receive_buffer_bytes",
            "The receive buffer the kernel granted (SO_RCVBUF).",
            labels=["listen"],
        )
        for stats in listener.socket_stats():
            drops.add_metric([stats.endpoint], stats.drops)
            queued.add_metric([stats.endpoint], stats.queued_bytes)
            buffer.add_metric([stats.endpoint], stats.buffer_bytes)
        yield drops
        yield queued
        yield buffer


def registry_for(metrics: CollectorMetrics) -> CollectorRegistry:
    """Return a registry with flowtrap's metrics and the process's own."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


# Requests answered at once, and how long a client may take to send one; past
# these a connection is closed, so slow or many clients cannot pile up threads.
MAX_CONCURRENT_REQUESTS = 8
REQUEST_TIMEOUT_SECONDS = 5.0


class _QuietHandler(WSGIRequestHandler):
    """Serves requests without logging each one to stderr."""

    timeout = REQUEST_TIMEOUT_SECONDS

    def log_message(self, format: str, *args: Any) -> None:
        """Say nothing."""


class _Server(ThreadingMixIn, WSGIServer):
    """A WSGI server answering each request in its own thread, a few at a time."""

    daemon_threads = True

    def server_activate(self) -> None:
        """Start listening with a fresh set of request slots."""
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT_REQUESTS)
        super().server_activate()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Refuse (close) a connection when every slot is busy."""
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Answer one request, then free its slot."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Server6(_Server):
    """The same, on an IPv6 address."""

    address_family = socket.AF_INET6


class MetricsServer:
    """Serves /metrics, /healthz and /readyz on one HTTP address."""

    def __init__(
        self, endpoint: str, registry: CollectorRegistry, health: Health
    ) -> None:
        """Remember where to listen; no socket until start()."""
        self.endpoint = endpoint
        self.health = health
        self._metrics = make_wsgi_app(registry)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve in a background thread."""
        host, port = parse_endpoint(self.endpoint)
        kind = _Server6 if ":" in host else _Server
        try:
            self._server = make_server(
                host, port, self._app, server_class=kind, handler_class=_QuietHandler
            )
        except OSError as error:
            raise OSError(
                error.errno,
                f"cannot serve metrics on {self.endpoint}: {error.strerror}; "
                "pick a free port with --metrics HOST:PORT",
            ) from error
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()
        log.info("metrics listening", extra={"endpoint": self.address()})

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None

    def address(self) -> str:
        """Return the bound address as HOST:PORT."""
        if self._server is None:
            return self.endpoint
        host, port = self._server.server_address[:2]
        host = str(host)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _app(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        """Route a request."""
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            return _status(start_response, self.health.alive(), "alive", "stalled")
        if path == "/readyz":
            return _status(start_response, self.health.ready, "ready", "not ready")
        if path in ("/metrics", "/"):
            result: Iterable[bytes] = self._metrics(environ, start_response)
            return result
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics, /healthz or /readyz\n"]


def _status(
    start_response: StartResponse, good: bool, yes: str, no: str
) -> list[bytes]:
    """Answer 200 with ``yes`` or 503 with ``no``."""
    status = "200 OK" if good else "503 Service Unavailable"
    start_response(status, [("Content-Type", "text/plain")])
    return [(yes if good else no).encode() + b"\n"]
