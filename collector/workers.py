"""``--workers N``: N processes receive and decode UDP; this one detects and writes.

Each worker owns one socket per listen address in a SO_REUSEPORT group,
steered by source address (``collector.steering``), so an exporter always
lands on the same worker and its templates, held data and sequence numbers
never split. Workers (``collector.worker``) send the few flow records a
detector wants; the real detectors, windows, outputs, metrics and cluster link
run here, on every exporter's flows, so correlation works as in one process.
This process tells the workers which source addresses its detectors watch,
adds up their counters for metrics and the shutdown summary, and stops the
collector with an error if one dies, for the service manager to restart it
whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import queue
import signal
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from collector import state as state_file
from collector.allowlist import Allowlist
from collector.listener import Backlog
from collector.pipeline import Pipeline
from collector.sockets import SocketStats, bound, open_socket
from collector.steering import steer_by_source
from collector.worker import Report, Stand, run_worker
from schemas.config import Config, parse_endpoint

log = logging.getLogger(__name__)

# How long a worker may take to drain its sockets and say goodbye at shutdown.
STOP_SECONDS = 30.0
# Messages taken from one worker per turn of the event loop.
MESSAGES_PER_TURN = 64
# A worker that has not reported for this long is stuck: /healthz fails.
SILENT_SECONDS = 5.0


@dataclass(slots=True)
class _Child:
    """One worker process as the detecting process sees it."""

    index: int
    pid: int
    conn: Connection
    done: bool = False
    gone: bool = False
    # The last allowlist generation this worker said it applied.
    applied: int = 0
    # When its last report came (monotonic seconds).
    heard: float = field(default_factory=time.monotonic)
    sockets: list[SocketStats] = field(default_factory=list)
    backlog: Backlog = field(default_factory=Backlog)


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
        self._generation = 0
        self._waiting: deque[tuple[int, Callable[[], None]]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: queue.SimpleQueue[tuple[_Child, tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._sender: threading.Thread | None = None
        pipeline.on_fresh = self._fresh

    @property
    def allowlist(self) -> Allowlist | None:
        """Return the exporter allowlist the workers apply."""
        return self._allowlist

    def replace_allowlist(
        self, allowlist: Allowlist | None, applied: Callable[[], None]
    ) -> None:
        """Send a new allowlist to every worker (SIGHUP).

        ``applied`` runs once every running worker has said it has the new
        one, so a reload is not reported done while a worker still applies
        the old list.
        """
        self._allowlist = allowlist
        self._generation += 1
        self._waiting.append((self._generation, applied))
        self._tell(("allowlist", allowlist, self._generation))
        self._settle()

    def _settle(self) -> None:
        """Run the callbacks of the allowlists every running worker has applied."""
        running = [c.applied for c in self.children if not c.done and not c.gone]
        reached = min(running, default=self._generation)
        while self._waiting and self._waiting[0][0] <= reached:
            self._waiting.popleft()[1]()

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
        # Read once here, before any worker can save over a file another
        # still has to read (a change of N spreads exporters differently).
        saved = []
        if self.config.state_file is not None:
            saved = state_file.read_family(Path(self.config.state_file))
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
                    code = run_worker(
                        index,
                        self.config,
                        stands,
                        groups[index],
                        theirs,
                        self.decoder,
                        self._allowlist,
                        saved,
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
        # SO_REUSEPORT lets any process of this user join a group: bind once
        # without it first, so that another collector on the address is an
        # error here as it is for one process, instead of a silent share.
        open_socket(endpoint, buffer).close()
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
        """Read every worker's messages from now on, and send from a thread."""
        self._loop = loop
        for child in self.children:
            loop.add_reader(child.conn.fileno(), self._receive, child)
        self._start_sender()

    def _start_sender(self) -> None:
        """Start the thread that sends control messages, once."""
        if self._sender is None:
            self._sender = threading.Thread(
                target=self._send_all, name="worker control", daemon=True
            )
            self._sender.start()

    def _send_all(self) -> None:
        """Send queued control messages, each worker's in order (sender thread).

        Sending can block while a worker is busy sending its own flow records;
        the event loop must meanwhile keep reading them, or both would wait
        on each other for good.
        """
        while True:
            item = self._outbox.get()
            if item is None:
                return
            child, message = item
            with contextlib.suppress(OSError):
                child.conn.send(message)

    def _receive(self, child: _Child) -> None:
        """Take what one worker sent; a worker gone early stops the collector."""
        try:
            # A bounded turn: one busy worker must not starve the others.
            for _ in range(MESSAGES_PER_TURN):
                if not child.conn.poll():
                    break
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
        elif kind == "applied":
            child.applied = message[1]
            self._settle()
        elif kind == "done":
            child.done = True
            self._settle()

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
        child.backlog = report.backlog
        if report.sockets is not None:
            child.sockets = report.sockets
        child.heard = time.monotonic()

    def silent(self) -> list[int]:
        """Return the workers that have not reported for SILENT_SECONDS."""
        limit = time.monotonic() - SILENT_SECONDS
        return [
            child.index
            for child in self.children
            if not child.done and not child.gone and child.heard < limit
        ]

    def _tell(self, message: tuple[Any, ...]) -> None:
        """Queue a control message for every worker still running; never blocks."""
        for child in self.children:
            if not child.done and not child.gone:
                self._outbox.put((child, message))

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
            if not child.gone:
                loop.remove_reader(child.conn.fileno())
        # Started here too when start-up failed before the workers were read.
        self._start_sender()
        self._tell(("stop",))
        deadline = time.monotonic() + STOP_SECONDS
        waiting = {c.conn: c for c in self.children if not c.done and not c.gone}
        while waiting and (left := deadline - time.monotonic()) > 0:
            for conn in wait(list(waiting), left):
                child = waiting[conn]  # type: ignore[index]
                try:
                    self._handle(child, child.conn.recv())
                except (EOFError, OSError):
                    child.gone = True
                if child.done or child.gone:
                    del waiting[conn]  # type: ignore[arg-type]
        for child in self.children:
            if not child.done and not child.gone:
                log.error("worker did not stop; killed", extra={"worker": child.index})
                os.kill(child.pid, signal.SIGKILL)
            os.waitpid(child.pid, 0)
            child.conn.close()
        self._outbox.put(None)
        if self._sender is not None:
            self._sender.join(STOP_SECONDS)

    def backlog(self) -> Backlog:
        """Return the workers' backlogs, added up."""
        total = Backlog()
        for child in self.children:
            total.datagrams += child.backlog.datagrams
            total.bytes += child.backlog.bytes
            total.pauses += child.backlog.pauses
        return total

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
