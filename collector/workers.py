"""``--workers N``: N processes receive and decode UDP; this one detects and writes.

Each worker owns one socket per listen address in a SO_REUSEPORT group. A
classic BPF program on the group picks the socket from the datagram's source
address (modulo N), so an exporter always lands on the same worker and its
templates, held data and sequence numbers never split (the kernel's own
reuseport hash would move an exporter that changes its source port).

A worker decodes with the pipeline a single process uses, with stand-ins in
place of the detectors: they carry each detector's interest (protocols,
ports, watched sources), so the worker builds flow records only for the rows
a detector wants and sends those, few, to this process, where the real
detectors, windows, outputs, metrics and cluster link run. Detection thus
sees every exporter's flows in one place and correlates across workers as it
does in one process. This process tells the workers which source addresses
its detectors watch; the workers look back over their own recent rows for new
ones.

Workers send their counters as deltas every ``FLUSH_SECONDS``; metrics and the
shutdown summary add them up. A worker that dies stops the collector with an
error, for the service manager to restart it whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import logging
import multiprocessing
import os
import signal
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from collector.allowlist import Allowlist
from collector.listener import Listener, SocketStats, bound, open_socket
from collector.pipeline import Pipeline
from collector.proxy import ProxyProtocol
from collector.records import TimeRules
from collector.state import worker_path
from collector.stats import Stats
from detectors.base import Detector, Interest, Rule, SourceWatch
from detectors.windows import Windows
from schemas.config import Config, parse_endpoint
from schemas.flow import FlowRecord

log = logging.getLogger(__name__)

# Linux's SO_ATTACH_REUSEPORT_CBPF (asm-generic/socket.h) and the classic BPF
# offset of the network header (linux/filter.h); Python names neither.
SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)
SKF_NET_OFF = -0x100000
# Where the source address's last four bytes sit in the IP header.
_SOURCE_WORD = {socket.AF_INET: 12, socket.AF_INET6: 20}
_BPF_INSTRUCTION = struct.Struct("HBBI")
_BPF_LD_W_ABS = 0x20
_BPF_ALU_MOD_K = 0x94
_BPF_RET_A = 0x16

# How often a worker sends what it has: flow records and counters.
FLUSH_SECONDS = 0.05
# How often it reads its sockets' kernel counters (a walk of /proc/net/udp).
SOCKET_STATS_SECONDS = 1.0
# Flow records a worker sends at once when many are due.
FLOWS_PER_MESSAGE = 512
# How long a worker may take to drain its sockets and say goodbye at shutdown.
STOP_SECONDS = 30.0


def steered(address: str, workers: int) -> int:
    """Return the worker the steering program picks for a source address."""
    packed = ipaddress.ip_address(address).packed
    return int.from_bytes(packed[-4:], "big") % workers


def steer_by_source(sock: socket.socket, workers: int) -> None:
    """Make the socket's reuseport group pick a member by source address mod N.

    The program loads the last four bytes of the source address (the whole
    IPv4 address) and returns them modulo the number of workers; the kernel
    delivers to the group member with that index (the order they bound in).
    """
    word = _SOURCE_WORD[sock.family]
    program = b"".join(
        _BPF_INSTRUCTION.pack(code, 0, 0, value & 0xFFFFFFFF)
        for code, value in (
            (_BPF_LD_W_ABS, SKF_NET_OFF + word),
            (_BPF_ALU_MOD_K, workers),
            (_BPF_RET_A, 0),
        )
    )
    filters = ctypes.create_string_buffer(program)
    # struct sock_fprog: the instruction count, then a pointer to them.
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(filters))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


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
        index: int,
        config: Config,
        pipeline: Pipeline,
        conn: Connection,
        allowlist: Allowlist | None,
    ) -> None:
        """Wire the worker's pipeline to its connection; no I/O."""
        self.index = index
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
        )
        self.stop = asyncio.Event()
        self.sockets_read = 0.0
        # Which exporters' saved templates this worker restores.
        self.keep: Callable[[str], bool] | None = None

    def _keep(self, flow: FlowRecord) -> None:
        """Queue a flow record a detector wants; send when enough are queued."""
        self.outbox.append(flow)
        if len(self.outbox) >= FLOWS_PER_MESSAGE:
            self._send_flows()

    def _send_flows(self) -> None:
        """Send the queued flow records to the detecting process."""
        if self.outbox:
            flows, self.outbox = self.outbox, []
            self.conn.send(("flows", flows))

    def flush(self) -> None:
        """Send queued flow records and the counters since the last flush."""
        self._send_flows()
        now = time.monotonic()
        sockets = now - self.sockets_read >= SOCKET_STATS_SECONDS
        if sockets:
            self.sockets_read = now
        report = _take_report(self.pipeline.stats, self.listener, sockets)
        self.conn.send(("report", report))

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
        self.pipeline.load_state(self.keep)
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
        self.conn.send(("done",))


def _worker_main(
    index: int,
    config: Config,
    stands: Sequence[Stand],
    sockets: list[socket.socket],
    conn: Connection,
    decoder: Callable[[Config], Any],
    allowlist: Allowlist | None,
) -> int:
    """Run one worker to the end (in the forked child); return its exit code."""
    rules = TimeRules(tolerance_ms=int(config.time_tolerance_seconds * 1000))
    standins: list[Detector] = [StandIn(stand) for stand in stands]
    pipeline = Pipeline(decoder(config), standins, Windows(), [], rules)
    if config.state_file is not None:
        base = Path(config.state_file)
        pipeline.keep_state(worker_path(base, index), config.state_save_seconds, base)
    worker = _Worker(index, config, pipeline, conn, allowlist)
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


@dataclass(slots=True)
class _Child:
    """One worker process as the detecting process sees it."""

    index: int
    pid: int
    conn: Connection
    done: bool = False
    gone: bool = False
    sockets: list[SocketStats] = field(default_factory=list)


class ProxyCounts:
    """The workers' PROXY header errors, added up (they log their own warnings)."""

    def __init__(self) -> None:
        """Start at zero."""
        self.errors: Counter[str] = Counter()

    def report(self) -> None:
        """Nothing to log here: each worker logs what it dropped."""


class WorkerPool:
    """The worker processes, read and counted as one listener.

    ``fork`` must run before any thread or event loop starts (the CLI calls it
    first): the children are forked, then each runs its own event loop.
    """

    def __init__(
        self,
        config: Config,
        pipeline: Pipeline,
        decoder: Callable[[Config], Any],
        allowlist: Allowlist | None,
    ) -> None:
        """Remember what to start; nothing forks until fork()."""
        self.config = config
        self.pipeline = pipeline
        self.decoder = decoder
        self._allowlist = allowlist
        self.received = 0
        self.denied = 0
        self.denied_sources: Counter[str] = Counter()
        self.proxy = ProxyCounts()
        self.children: list[_Child] = []
        self.failed: Callable[[str], None] = lambda reason: None
        self._addresses: list[str] = []
        self._versions: dict[int, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        pipeline.on_fresh = self._fresh

    @property
    def allowlist(self) -> Allowlist | None:
        """Return the exporter allowlist the workers apply."""
        return self._allowlist

    @allowlist.setter
    def allowlist(self, allowlist: Allowlist | None) -> None:
        """Replace the allowlist in every worker (SIGHUP)."""
        self._allowlist = allowlist
        self._tell(("allowlist", allowlist))

    def fork(self) -> None:
        """Bind the socket groups, then fork one worker per group member."""
        count = self.config.workers
        groups: list[list[socket.socket]] = [[] for _ in range(count)]
        try:
            for endpoint in self.config.listen:
                members = self._group(endpoint, count)
                for index, sock in enumerate(members):
                    groups[index].append(sock)
        except OSError:
            for sock in (s for group in groups for s in group):
                sock.close()
            raise
        self._addresses = [bound(sock) for sock in groups[0]]
        stands = [Stand.of(detector) for detector in self.pipeline.detectors]
        context = multiprocessing.get_context("fork")
        for index in range(count):
            mine, theirs = context.Pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                mine.close()
                for child in self.children:
                    child.conn.close()
                for other, group in enumerate(groups):
                    if other != index:
                        for sock in group:
                            sock.close()
                code = 1
                try:
                    code = _worker_main(
                        index,
                        self.config,
                        stands,
                        groups[index],
                        theirs,
                        self.decoder,
                        self._allowlist,
                    )
                finally:
                    logging.shutdown()
                    os._exit(code)
            theirs.close()
            self.children.append(_Child(index, pid, mine))
        for sock in (s for group in groups for s in group):
            sock.close()
        log.info(
            "workers started",
            extra={"workers": count, "pids": [c.pid for c in self.children]},
        )

    def _group(self, endpoint: str, count: int) -> list[socket.socket]:
        """Bind ``count`` sockets on one address, steered by source address."""
        buffer = self.config.receive_buffer_bytes
        first = open_socket(endpoint, buffer, reuse_port=True)
        members = [first]
        try:
            host, _ = parse_endpoint(endpoint)
            port = first.getsockname()[1]
            same = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            members += [
                open_socket(same, buffer, reuse_port=True) for _ in range(count - 1)
            ]
            steer_by_source(first, count)
        except OSError:
            for sock in members:
                sock.close()
            raise
        return members

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read every worker's messages from now on."""
        self._loop = loop
        for child in self.children:
            loop.add_reader(child.conn.fileno(), self._receive, child)

    def _receive(self, child: _Child) -> None:
        """Take what one worker sent; a worker gone early stops the collector."""
        try:
            while child.conn.poll():
                self._handle(child, child.conn.recv())
        except (EOFError, OSError):
            child.gone = True
            if self._loop is not None:
                self._loop.remove_reader(child.conn.fileno())
            if not child.done:
                log.error("worker exited", extra={"worker": child.index})
                self.failed(f"worker {child.index} exited")

    def _handle(self, child: _Child, message: tuple[Any, ...]) -> None:
        """Apply one worker message."""
        kind = message[0]
        if kind == "flows":
            self.pipeline.observe(message[1], local=True)
        elif kind == "report":
            self._merge(child, message[1])
        elif kind == "done":
            child.done = True

    def _merge(self, child: _Child, report: Report) -> None:
        """Add a worker's counters to the collector's."""
        self.pipeline.stats.merge(
            report.counts,
            report.errors,
            report.errors_by_exporter,
            report.by_exporter,
        )
        self.received += report.received
        self.denied += report.denied
        self.denied_sources.update(report.denied_sources)
        self.proxy.errors.update(report.proxy_errors)
        if report.sockets is not None:
            child.sockets = report.sockets

    def _tell(self, message: tuple[Any, ...]) -> None:
        """Send a control message to every worker still running."""
        for child in self.children:
            if child.done:
                continue
            try:
                child.conn.send(message)
            except OSError:
                continue

    def _fresh(self, index: int, fresh: set[bytes]) -> None:
        """Tell the workers about newly watched sources, to look back for."""
        self._tell(("fresh", index, set(fresh)))

    def sync(self) -> None:
        """Send each watch's members where they changed (drops reach workers here)."""
        for index, detector in enumerate(self.pipeline.detectors):
            watch = detector.interest.sources
            if watch is None or self._versions.get(index) == watch.version:
                continue
            self._versions[index] = watch.version
            self._tell(("members", index, set(watch.members)))

    def stop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Tell every worker to stop, take all they still send, and reap them."""
        for child in self.children:
            loop.remove_reader(child.conn.fileno())
        self._tell(("stop",))
        deadline = time.monotonic() + STOP_SECONDS
        for child in self.children:
            while not child.done and not child.gone:
                left = deadline - time.monotonic()
                try:
                    if left <= 0 or not child.conn.poll(left):
                        break
                    self._handle(child, child.conn.recv())
                except (EOFError, OSError):
                    child.gone = True
            if not child.done and not child.gone:
                log.error("worker did not stop; killed", extra={"worker": child.index})
                os.kill(child.pid, signal.SIGKILL)
            os.waitpid(child.pid, 0)
            child.conn.close()

    def socket_stats(self) -> list[SocketStats]:
        """Return each listen address's kernel counters, summed over the workers."""
        summed: dict[str, SocketStats] = {}
        for stats in (s for child in self.children for s in child.sockets):
            seen = summed.get(stats.endpoint)
            if seen is None:
                summed[stats.endpoint] = stats
            else:
                summed[stats.endpoint] = SocketStats(
                    stats.endpoint,
                    seen.drops + stats.drops,
                    seen.queued_bytes + stats.queued_bytes,
                    seen.buffer_bytes + stats.buffer_bytes,
                )
        return list(summed.values())

    def addresses(self) -> list[str]:
        """Return the addresses the workers listen on."""
        return list(self._addresses)
