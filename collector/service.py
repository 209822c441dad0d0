"""The live collector from start to stop: sockets, pipeline, outputs, metrics.

Start-up opens the outputs, then the metrics server, then the sockets, so that
nothing is received before there is somewhere to put it. SIGTERM and SIGINT
stop receiving, decode what the kernel still holds, close every window and
emit its event, drain the outputs and save state. SIGHUP re-reads the
configuration: internal networks and the exporter allowlist change in place,
event files start anew, and everything else waits for a restart.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING

from collector import outputs
from collector.allowlist import Allowlist
from collector.configure import ConfigError
from collector.decoder import Decoder
from collector.listener import Listener, Receiver
from collector.metrics import CollectorMetrics, Health, MetricsServer, registry_for
from collector.pipeline import Pipeline
from collector.proxy import ProxyProtocol
from collector.records import TimeRules
from collector.reporter import InputReporter
from collector.sinks import Sink
from collector.tcp import IpfixTcpServer
from collector.templates import Limits
from collector.workers import WorkerPool
from detectors.base import DetectionContext, DetectorConfigError
from detectors.networks import IPNetwork, Networks
from detectors.registry import build
from detectors.windows import Windows, WindowSettings
from schemas.config import Config

if TYPE_CHECKING:
    from collector.cluster import Cluster

log = logging.getLogger("flowtrap")

# How often the live clock advances when no datagram arrives, so that windows
# still close on a quiet network; also the pace of warnings and health beats.
TICK_SECONDS = 1.0
# Events written per turn of the event loop while a burst of them waits; each
# costs some 50 microseconds, so a turn stays within a few milliseconds and the
# sockets are read between turns.
EVENTS_PER_TURN = 64
# How long waiting events wait for an output's full queue before trying again.
OUTPUT_WAIT_SECONDS = 0.01

# Settings that SIGHUP applies; any other change waits for a restart.
RELOADED = frozenset({"internal_networks", "allowed_exporters"})


def make_decoder(config: Config) -> Decoder:
    """Build the decoder and its limits from the config."""
    limits = config.limits
    return Decoder(
        Limits(
            max_exporters=limits.max_exporters,
            max_templates_per_exporter=limits.max_templates_per_exporter,
            held_flowsets_per_exporter=limits.held_flowsets_per_exporter,
            held_bytes_per_exporter=limits.held_bytes_per_exporter,
            held_bytes_total=limits.held_bytes_total,
            held_max_age=limits.held_max_age_seconds,
            template_max_age=limits.template_max_age_seconds,
            max_template_fields_per_exporter=limits.max_template_fields_per_exporter,
            max_template_fields_total=limits.max_template_fields_total,
            template_changes_per_second=limits.template_changes_per_second,
            template_change_burst=limits.template_change_burst,
            scope_by_port=limits.template_scope_by_port,
        )
    )


def make_pipeline(config: Config, sink: Sink, networks: Networks) -> Pipeline:
    """Build the decoder, detectors and windows from the config."""
    decoder = make_decoder(config)
    detection = config.detection
    context = DetectionContext(networks, detection.detectors)
    try:
        detectors = build(detection.enabled, context)
    except DetectorConfigError as error:
        raise ConfigError(str(error)) from None
    windows = Windows(
        WindowSettings(
            seconds=detection.window_seconds,
            lateness=detection.lateness_seconds,
            max_open=detection.max_open_windows,
            sample_size=detection.sample_size,
        )
    )
    rules = TimeRules(tolerance_ms=int(config.time_tolerance_seconds * 1000))
    return Pipeline(decoder, detectors, windows, [sink], rules)


# Allocations between young-generation garbage collections (Python's default
# is 700). Records, findings and events make many short-lived containers; a
# collection every 700 of them cost about a tenth of a burst of findings.
GC_YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Keep the cyclic garbage collector off what start-up built.

    Modules, models and configuration live for the whole run; frozen, no
    collection walks them again (and forked workers share their pages).
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def allowlist_of(config: Config) -> Allowlist | None:
    """Return the exporter allowlist, or None when any host may send."""
    if config.allowed_exporters is None:
        return None
    return Allowlist(config.allowed_exporters)


def replace_networks(networks: Networks, internal: Iterable[IPNetwork]) -> None:
    """Change the internal networks in place, keeping every detector's state."""
    networks.replace(internal)


class Service:
    """Runs ``flowtrap run`` until a stop signal."""

    def __init__(self, config: Config, reload: Callable[[], Config]) -> None:
        """Build every part from the config; no socket opens until run()."""
        self.config = config
        self._read_config = reload
        self.networks = Networks(config.internal_networks)
        self.outputs = outputs.build(config)
        self.pipeline = make_pipeline(config, self.outputs, self.networks)
        self.cluster = self._join(config)
        if config.state_file is not None:
            self.pipeline.keep_state(config.state_file, config.state_save_seconds)
        allowlist = allowlist_of(config)
        self.listener: Receiver
        if config.workers > 1:
            self.listener = WorkerPool(config, self.pipeline, make_decoder, allowlist)
        else:
            self.listener = Listener(
                config.listen,
                config.receive_buffer_bytes,
                self.pipeline.feed,
                allowlist,
                ProxyProtocol(config.proxy_protocol_from),
                config.backlog_bytes,
            )
        self._failure: str | None = None
        self.tcp: IpfixTcpServer | None = None
        if config.listen_tcp:
            self.tcp = IpfixTcpServer(
                config.listen_tcp,
                self.pipeline.feed,
                self.pipeline.stats,
                self._permits,
            )
        self.health = Health()
        self.reporter = InputReporter(self.pipeline.stats, self.listener)
        self.metrics: MetricsServer | None = None
        if config.metrics is not None:
            collector = CollectorMetrics(
                self.pipeline, self.listener, self.outputs.outputs, self.health
            )
            registry = registry_for(collector)
            if self.cluster is not None:
                from collector.cluster import ClusterMetrics

                registry.register(ClusterMetrics(self.cluster))
            self.metrics = MetricsServer(config.metrics, registry, self.health)

    def _join(self, config: Config) -> Cluster | None:
        """Join the cluster, if one is configured: share findings, claim events."""
        if config.cluster is None:
            return None
        # Imported here: the NATS client costs start-up time a single
        # collector does not need to pay.
        from collector.cluster import (
            ClaimingSink,
            Cluster,
            ClusterSettings,
            retention_for,
        )

        detection = config.detection
        retention = retention_for(
            self.pipeline.detectors,
            detection.window_seconds,
            detection.lateness_seconds,
        )
        cluster = Cluster(
            ClusterSettings(
                config.cluster,
                retention,
                drain_seconds=config.output.drain_seconds,
            )
        )
        self.pipeline.observer = cluster.publish
        self.pipeline.sinks = [ClaimingSink(self.outputs, cluster)]
        return cluster

    def prepare(self) -> None:
        """Settle the heap; fork the worker processes, if any (before any thread)."""
        settle_heap()
        if isinstance(self.listener, WorkerPool):
            try:
                self.listener.fork()
            except OSError as error:
                raise ConfigError(str(error)) from None

    async def run(self) -> int:
        """Start, serve until SIGTERM or SIGINT, then stop cleanly."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        if isinstance(self.listener, WorkerPool):
            self.listener.failed = partial(self._fail, stop)
        # Handlers first: a signal that arrives while starting is acted on
        # once the loop runs, instead of killing the process.
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.pipeline.wake = partial(self._schedule_events, loop)
        self._start(loop)
        if self.tcp is not None:
            try:
                await self.tcp.start()
            except OSError as error:
                self._stop(loop)
                raise ConfigError(
                    f"cannot listen for IPFIX over TCP: {error}"
                ) from None
            log.info("ipfix over tcp started", extra={"listen": self.tcp.bound()})
        # Ready (and saying so) only once every listener takes traffic.
        self._announce()

        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), TICK_SECONDS)
            except TimeoutError:
                self._tick()

        # A second Ctrl-C during the drain below stops at once; a repeated
        # SIGTERM (or a SIGHUP) waits behind the drain and changes nothing.
        loop.remove_signal_handler(signal.SIGINT)
        if self.tcp is not None:
            await self.tcp.stop()
        self._stop(loop)
        if self._failure is not None:
            log.error(
                "collector stopped by a failure; restart it",
                extra={"reason": self._failure},
            )
            return 1
        return 0

    def _fail(self, stop: asyncio.Event, reason: str) -> None:
        """Stop the collector because part of it failed."""
        self._failure = reason
        stop.set()

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Open outputs, metrics and sockets, in that order; undo on failure."""
        try:
            self.outputs.start()
        except outputs.OutputError as error:
            raise ConfigError(str(error)) from None
        self._load_state()
        if self.cluster is not None:
            self.cluster.start()
        try:
            if self.metrics is not None:
                self.metrics.start()
            self.listener.start(loop)
        except OSError as error:
            self.listener.stop(loop)
            if self.metrics is not None:
                self.metrics.stop()
            if self.cluster is not None:
                self.cluster.stop()
            self.outputs.close()
            raise ConfigError(str(error)) from None

    def _announce(self) -> None:
        """Mark the collector ready and log where it listens."""
        self.health.ready = True
        extra: dict[str, object] = {"listen": self.listener.addresses()}
        if self.metrics is not None:
            extra["metrics"] = self.metrics.address()
        log.info("collector started", extra=extra)
        self._warn_open_to_all()

    def _schedule_events(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start writing waiting events on the next turn of the loop."""
        loop.call_soon(self._write_events, loop)

    def _write_events(self, loop: asyncio.AbstractEventLoop) -> None:
        """Write a slice of the waiting events; come back next turn for more.

        When the outputs' queues are full, come back once they had time to
        deliver some.
        """
        before = len(self.pipeline.pending)
        if not before:
            return
        left = self.pipeline.write_pending(EVENTS_PER_TURN)
        if left == before:
            loop.call_later(OUTPUT_WAIT_SECONDS, self._write_events, loop)
        elif left:
            loop.call_soon(self._write_events, loop)

    def _tick(self) -> None:
        """Advance the clock, report bad input, and show the loop is alive."""
        self._take_observations()
        if isinstance(self.listener, WorkerPool):
            self.listener.sync()
        self.pipeline.advance(time.time())
        self.reporter.report()
        self.listener.proxy.report()
        if isinstance(self.listener, WorkerPool) and (silent := self.listener.silent()):
            # Left to go stale, /healthz then fails and says the collector is
            # not taking traffic.
            log.warning("workers not reporting", extra={"workers": silent})
            return
        self.health.beat()

    def _take_observations(self) -> None:
        """Run the other nodes' observations through this node's detectors."""
        if self.cluster is not None:
            self.pipeline.observe(self.cluster.take())

    def _stop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop receiving, decode what arrived, emit every window, drain, save."""
        self.health.ready = False
        # Order matters: stop reading (draining what the kernel holds), then
        # close every window so that its event is written before the outputs
        # drain and close.
        self.listener.stop(loop)
        self._take_observations()
        self.pipeline.advance(time.time())
        self.pipeline.flush()
        self._save_state()
        self.reporter.report()
        self.listener.proxy.report()
        if self.metrics is not None:
            self.metrics.stop()
        stats = self.pipeline.stats
        log.info(
            "collector stopped",
            extra={
                "datagrams": self.listener.received,
                "denied": self.listener.denied,
                "proxy_errors": dict(self.listener.proxy.errors),
                "flow_records": stats.counts["flow_records"],
                "events": sum(self.pipeline.events.values()),
                "errors": dict(stats.errors),
                "dropped_events": sum(o.dropped for o in self.outputs.outputs),
            },
        )

    def reload(self) -> None:
        """Apply a re-read configuration (SIGHUP); a bad one changes nothing."""
        try:
            new = self._read_config()
        except ConfigError as error:
            self.health.reloads["refused"] += 1
            log.error(
                "configuration not reloaded; the running one stays",
                extra={"problems": str(error)},
            )
            return
        replace_networks(self.networks, new.internal_networks)
        self.outputs.reopen()

        waiting = sorted(
            name
            for name in type(new).model_fields
            if name not in RELOADED and getattr(new, name) != getattr(self.config, name)
        )
        if waiting:
            log.warning("restart to apply", extra={"settings": waiting})
        self.config = self.config.model_copy(
            update={name: getattr(new, name) for name in RELOADED}
        )
        allowlist = allowlist_of(new)
        self.listener.replace_allowlist(
            allowlist, lambda: self._reloaded(new, allowlist)
        )

    def _reloaded(self, new: Config, allowlist: Allowlist | None) -> None:
        """Count and log a reload once every socket reader applies it."""
        self.health.reloads["applied"] += 1
        log.info(
            "configuration reloaded",
            extra={
                "internal_networks": ",".join(map(str, new.internal_networks)),
                "allowed_exporters": str(allowlist or "any"),
            },
        )
        self._warn_open_to_all()

    def _permits(self, exporter: str) -> bool:
        """Return True when the allowlist in force (reloads included) lets it send."""
        allowlist = self.listener.allowlist
        return allowlist is None or allowlist.permits(exporter)

    def _warn_open_to_all(self) -> None:
        """Say once (per start or reload) that any host may send."""
        if self.listener.allowlist is None:
            log.warning(
                "no exporter allowlist: any host may send export packets; "
                "set allowed_exporters"
            )

    def _load_state(self) -> None:
        """Restore template state after outputs open, before any socket does."""
        self.pipeline.load_state()

    def _save_state(self) -> None:
        """Save template state after the last datagram."""
        self.pipeline.save_state()
