"""The shape every output shares: a bounded queue drained by its own thread.

Decoding never waits for an output. ``submit`` only puts the message on the
queue; when the queue is full the message is dropped and counted. The thread
delivers messages in order, and a message that fails stays at the head and is
retried with a growing delay, so a receiver that goes away and comes back loses
nothing while the queue holds. At shutdown the queue drains for a bounded time.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from dataclasses import dataclass

from collector.outputs.message import Message

log = logging.getLogger(__name__)

# How often an idle output wakes up for its housekeeping (fsync, time rotation).
IDLE_SECONDS = 0.25


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """Queue bound, retry delays and the shutdown drain, from ``[output]``."""

    size: int = 10_000
    retry_initial: float = 0.5
    retry_max: float = 30.0
    connect_timeout: float = 5.0
    drain: float = 10.0


class Undeliverable(Exception):
    """A message that no retry can deliver (too large for the transport)."""


class QueuedOutput:
    """Base of every output: queue, worker thread, retries and counters.

    A subclass turns a message into bytes (``encode``) and delivers bytes
    (``send``), raising OSError when it could not; ``disconnect`` forgets a broken
    connection and ``idle`` runs when nothing is queued.
    """

    def __init__(self, name: str, settings: QueueSettings) -> None:
        """Set up the queue and counters; no I/O until start()."""
        self.name = name
        self.settings = settings
        self.sent = 0
        self.retried = 0
        self.trimmed = 0
        self.connected = False
        # Drops are counted apart by the thread that makes them: the caller's
        # (queue full) and the worker's (undeliverable, drain timed out).
        self._refused = 0
        self._lost = 0
        self._complained = False
        self._queue: queue.Queue[Message] = queue.Queue(maxsize=settings.size)
        self._stopping = threading.Event()
        self._deadline = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Open what can be opened now, then start delivering."""
        self.open()
        self._thread = threading.Thread(
            target=self._run, name=f"output {self.name}", daemon=True
        )
        self._thread.start()

    def submit(self, message: Message) -> None:
        """Queue a message; never blocks. A full queue drops it, counted."""
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            self._refused += 1
            log.warning("output queue full", extra={"output": self.name})

    @property
    def dropped(self) -> int:
        """Return how many messages this output will never deliver."""
        return self._refused + self._lost

    def depth(self) -> int:
        """Return how many messages wait."""
        return self._queue.qsize()

    def room(self) -> int | None:
        """Return how many more messages fit, or None while the output is down.

        The pipeline holds events back rather than overflow a working output;
        an output that cannot deliver takes (and drops, counted) what comes,
        so that it never holds back the others.
        """
        if self._complained:
            return None
        return self._queue.maxsize - self._queue.qsize()

    def stop(self) -> None:
        """Deliver what is queued (for at most the drain time), then close."""
        self._deadline = time.monotonic() + self.settings.drain
        self._stopping.set()

    def join(self) -> None:
        """Wait for the worker to finish draining."""
        if self._thread is not None:
            self._thread.join(self.settings.drain + self.settings.connect_timeout + 5)
            self._thread = None

    def open(self) -> None:
        """Open at start what must fail early (a file); default: nothing."""

    def encode(self, message: Message) -> bytes:
        """Turn a message into the bytes this output sends."""
        raise NotImplementedError

    def send(self, payload: bytes) -> None:
        """Deliver one payload; raise OSError to have it retried."""
        raise NotImplementedError

    def disconnect(self) -> None:
        """Drop a broken connection; default: nothing."""

    def idle(self, now: float) -> None:
        """Housekeeping while nothing is queued; default: nothing."""

    def close(self) -> None:
        """Release everything at the end; default: nothing."""

    def _run(self) -> None:
        """Deliver messages until stopped and drained."""
        while True:
            try:
                message = self._queue.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                if self._stopping.is_set():
                    break
                self._housekeeping()
                continue
            self._deliver(message)
            if not self._stopping.is_set():
                self._housekeeping()
        self.close()

    def _housekeeping(self) -> None:
        """Run ``idle``; its failure is logged, never fatal."""
        try:
            self.idle(time.time())
        except OSError as error:
            log.warning("output upkeep failed", extra=self._about(error))

    def _deliver(self, message: Message) -> None:
        """Send one message, retrying with backoff until it goes or time is up."""
        try:
            payload = self.encode(message)
        except Undeliverable as error:
            self._lost += 1
            log.warning("event not deliverable", extra=self._about(error))
            return
        delay = self.settings.retry_initial
        while True:
            try:
                self.send(payload)
            except Undeliverable as error:
                self._lost += 1
                log.warning("event not deliverable", extra=self._about(error))
                return
            except OSError as error:
                self.retried += 1
                self._lost_connection(error)
                if self._out_of_time():
                    self._give_up(1)
                    return
                self._pause(delay)
                delay = min(delay * 2, self.settings.retry_max)
                continue
            self.sent += 1
            if not self.connected:
                self.connected = True
                self._complained = False
                log.info("output connected", extra={"output": self.name})
            return

    def _lost_connection(self, error: OSError) -> None:
        """Forget the connection; warn once per outage, then only at debug."""
        if not self._complained:
            log.warning("output unavailable", extra=self._about(error))
            self._complained = True
        else:
            log.debug("output retry failed", extra=self._about(error))
        self.connected = False
        with contextlib.suppress(OSError):
            self.disconnect()

    def _out_of_time(self) -> bool:
        """Return True when stopping and the drain time is spent."""
        return self._stopping.is_set() and time.monotonic() >= self._deadline

    def _pause(self, delay: float) -> None:
        """Wait before a retry: jittered, and never past the drain deadline."""
        # Jitter keeps many collectors from reconnecting in step.
        wait = delay * random.uniform(0.5, 1.0)
        if self._stopping.is_set():
            wait = min(wait, max(0.0, self._deadline - time.monotonic()))
        time.sleep(wait)

    def _give_up(self, current: int) -> None:
        """Drop the message in hand and everything queued; the drain timed out."""
        lost = current
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
            lost += 1
        self._lost += lost
        log.error(
            "output could not drain before shutdown",
            extra={"output": self.name, "dropped": lost},
        )

    def _about(self, error: Exception) -> dict[str, object]:
        """Log fields naming this output and an error."""
        return {"output": self.name, "error": str(error) or type(error).__name__}
