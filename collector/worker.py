"""One ``--workers`` process: receive and decode, send what the detectors want.

A worker runs the pipeline a single process uses, with stand-ins in place of
the detectors: they carry each detector's interest (protocols, ports, watched
sources), so the worker builds flow records only for the rows a detector
wants, and sends those, few, over its pipe to the detecting process
(``collector.workers``). It sends its counters as deltas every
``FLUSH_SECONDS``, follows the watched sources it is told about (looking back
over its own recent rows for new ones), and stops when told to, after
draining its sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from collector.allowlist import Allowlist
from collector.listener import Backlog, Listener
from collector.pipeline import Pipeline
from collector.proxy import ProxyProtocol
from collector.records import TimeRules
from collector.sockets import SocketStats
from collector.state import StateFile, worker_path
from collector.stats import Stats
from collector.steering import steered
from detectors.base import Detector, Interest, Rule, SourceWatch
from detectors.windows import Windows
from schemas.config import Config
from schemas.flow import FlowRecord

# How often a worker sends what it has: flow records and counters.
FLUSH_SECONDS = 0.05
# How often it reads its sockets' kernel counters (a walk of /proc/net/udp).
SOCKET_STATS_SECONDS = 1.0
# Flow records a worker sends at once when many are due.
FLOWS_PER_MESSAGE = 512


@dataclass(frozen=True, slots=True)
class Stand:
    """What a worker needs of one detector: its rule and its interest."""

    rule: Rule
    protocols: frozenset[int] | None
    dst_ports: frozenset[int] | None
    watch: tuple[frozenset[int], float] | None

    @classmethod
    def of(cls, detector: Detector) -> Stand:
        """Describe a detector's interest."""
        interest = detector.interest
        watch = interest.sources
        return cls(
            detector.rule,
            interest.protocols,
            interest.dst_ports,
            None if watch is None else (watch.protocols, watch.lookback_seconds),
        )


class StandIn:
    """A detector's place in a worker: its interest; its findings come later."""

    def __init__(self, stand: Stand) -> None:
        """Take the interest; the watch starts empty and follows the real one."""
        self.rule = stand.rule
        watch = None if stand.watch is None else SourceWatch(*stand.watch)
        self.interest = Interest(stand.protocols, stand.dst_ports, watch)

    def evaluate(self, flow: FlowRecord) -> tuple[()]:
        """Find nothing: the flow goes to the detecting process instead."""
        return ()


@dataclass(slots=True)
class Report:
    """A worker's counters since its last report, and its sockets now."""

    counts: Counter[str]
    errors: Counter[str]
    errors_by_exporter: Counter[tuple[str, str]]
    by_exporter: dict[str, Counter[str]]
    received: int
    denied: int
    denied_sources: Counter[str]
    proxy_errors: Counter[str]
    backlog: Backlog
    # None: unchanged since the last report.
    sockets: list[SocketStats] | None = None


def _take_report(stats: Stats, listener: Listener, sockets: bool) -> Report:
    """Copy a worker's counters into a report and start them again from zero."""
    report = Report(
        counts=stats.counts.copy(),
        errors=stats.errors.copy(),
        errors_by_exporter=stats.errors_by_exporter.copy(),
        by_exporter={k: v.copy() for k, v in stats.by_exporter.items() if v},
        received=listener.received,
        denied=listener.denied,
        denied_sources=listener.denied_sources.copy(),
        proxy_errors=listener.proxy.errors.copy(),
        backlog=listener.backlog(),
        sockets=listener.socket_stats() if sockets else None,
    )
    stats.counts.clear()
    stats.errors.clear()
    stats.errors_by_exporter.clear()
    stats.by_exporter.clear()
    listener.received = listener.denied = 0
    listener.denied_sources.clear()
    listener.proxy.errors.clear()
    return report


class _Worker:
    """Everything one worker process runs."""

    def __init__(
        self,
        config: Config,
        pipeline: Pipeline,
        conn: Connection,
        allowlist: Allowlist | None,
    ) -> None:
        """Wire the worker's pipeline to its connection; no I/O."""
        self.conn = conn
        self.pipeline = pipeline
        self.outbox: list[FlowRecord] = []
        self.pipeline.observer = self._keep
        self.standins = [d for d in pipeline.detectors if isinstance(d, StandIn)]
        self.listener = Listener(
            [],
            config.receive_buffer_bytes,
            pipeline.feed,
            allowlist,
            ProxyProtocol(config.proxy_protocol_from),
            config.backlog_bytes,
        )
        self.stop = asyncio.Event()
        self.sockets_read = 0.0
        # The saved state the detecting process read before the workers
        # started, and which of its exporters this worker restores.
        self.saved: list[StateFile] = []
        self.keep: Callable[[str], bool] = lambda address: True

    def _keep(self, flow: FlowRecord) -> None:
        """Queue a flow record a detector wants; send when enough are queued."""
        self.outbox.append(flow)
        if len(self.outbox) >= FLOWS_PER_MESSAGE:
            self._send_flows()

    def _send_flows(self) -> None:
        """Send the queued flow records to the detecting process."""
        if self.outbox:
            flows, self.outbox = self.outbox, []
            self._send(("flows", flows))

    def _send(self, message: tuple[Any, ...]) -> None:
        """Send one message; if the detecting process is gone, stop."""
        try:
            self.conn.send(message)
        except OSError:
            self.stop.set()

    def flush(self) -> None:
        """Send queued flow records and the counters since the last flush."""
        self._send_flows()
        now = time.monotonic()
        sockets = now - self.sockets_read >= SOCKET_STATS_SECONDS
        if sockets:
            self.sockets_read = now
        report = _take_report(self.pipeline.stats, self.listener, sockets)
        self._send(("report", report))

    def control(self) -> None:
        """Apply the detecting process's messages: watched sources, reloads, stop."""
        try:
            while self.conn.poll():
                self._apply(self.conn.recv())
        except (EOFError, OSError):
            # The detecting process is gone: nobody is left to send to.
            self.stop.set()

    def _apply(self, message: tuple[Any, ...]) -> None:
        """Apply one control message."""
        kind = message[0]
        if kind == "fresh":
            watch = self.standins[message[1]].interest.sources
            if watch is not None:
                for packed in message[2]:
                    watch.add_packed(packed)
                self.pipeline.observe(())
        elif kind == "members":
            watch = self.standins[message[1]].interest.sources
            if watch is not None:
                watch.replace(message[2])
        elif kind == "allowlist":
            self.listener.allowlist = message[1]
            self._send(("applied", message[2]))
        elif kind == "stop":
            self.stop.set()

    async def serve(self, sockets: list[socket.socket]) -> None:
        """Receive and decode until told to stop; then drain, flush and say so."""
        loop = asyncio.get_running_loop()
        # The detecting process decides when workers stop and reload; a
        # terminal's Ctrl-C or a service manager's SIGTERM to the whole group
        # must not stop a worker before it has drained.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, lambda: None)
        loop.add_reader(self.conn.fileno(), self.control)
        # Templates first, so that the first data packet decodes at once.
        self.pipeline.restore_state(self.saved, self.keep)
        self.saved = []
        self.listener.start(loop, sockets)
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), FLUSH_SECONDS)
            self.pipeline.advance(time.time())
            self.listener.proxy.report()
            self.flush()
        loop.remove_reader(self.conn.fileno())
        self.listener.stop(loop)
        self.pipeline.advance(time.time())
        self.pipeline.save_state()
        self.flush()
        self._send(("done",))


def run_worker(
    index: int,
    config: Config,
    stands: Sequence[Stand],
    sockets: list[socket.socket],
    conn: Connection,
    decoder: Callable[[Config], Any],
    allowlist: Allowlist | None,
    saved: list[StateFile],
) -> int:
    """Run one worker to the end (in the forked child); return its exit code."""
    rules = TimeRules(tolerance_ms=int(config.time_tolerance_seconds * 1000))
    standins: list[Detector] = [StandIn(stand) for stand in stands]
    pipeline = Pipeline(decoder(config), standins, Windows(), [], rules)
    if config.state_file is not None:
        base = Path(config.state_file)
        pipeline.keep_state(worker_path(base, index), config.state_save_seconds)
    worker = _Worker(config, pipeline, conn, allowlist)
    worker.saved = saved
    # Behind a balancer every datagram comes from its address, whatever
    # exporter the header names: then any exporter may land here.
    if config.proxy_protocol_from is None:
        workers = config.workers
        worker.keep = lambda address: steered(address, workers) == index
    try:
        asyncio.run(worker.serve(sockets))
    except (BrokenPipeError, ConnectionResetError):
        return 1
    return 0
