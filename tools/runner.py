"""Start ``flowtrap run`` as a real process, send it export packets, stop it.

Shared by ``make demo`` and the live tests: the collector runs exactly as an
operator would start it, on 127.0.0.1 with a port the kernel picks.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncio_dgram
import orjson

from collector.capture import read_capture

_STARTED = re.compile(r"collector started listen=\['(?P<host>[^']+):(?P<port>\d+)'")


class CollectorProcess:
    """A running ``flowtrap run`` on 127.0.0.1 writing events to a file."""

    def __init__(self, events: Path, extra: Sequence[str] = (), timeout: float = 15.0):
        """Remember how to start it; nothing runs until start()."""
        self.events = events
        self.extra = list(extra)
        self.timeout = timeout
        self.port = 0
        # The "collector started" log line, with every address it reports,
        # and every line logged up to it.
        self.started = ""
        self.startup: list[str] = []
        # What the collector logged after that line, once it has stopped.
        self.stderr = ""
        self._process: subprocess.Popen[str] | None = None
        # A thread reads stderr all along, so the pipe never fills and blocks
        # the collector, and no line is lost between start() and stop().
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None

    def start(self) -> CollectorProcess:
        """Start the collector and wait until it says where it listens."""
        command = [
            sys.executable,
            "-m",
            "collector",
            "run",
            "--listen",
            "127.0.0.1:0",
            "--events",
            str(self.events),
            *self.extra,
        ]
        self._process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._reader = threading.Thread(
            target=self._read, args=(self._process,), daemon=True
        )
        self._reader.start()
        deadline = time.monotonic() + self.timeout
        lines = []
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            lines.append(line)
            match = _STARTED.search(line)
            if match:
                self.port = int(match.group("port"))
                self.started = line
                self.startup = lines
                return self
        self._process.kill()
        raise RuntimeError("flowtrap run did not start:\n" + "".join(lines))

    def _read(self, process: subprocess.Popen[str]) -> None:
        """Hand every stderr line to the queue; None at the end."""
        assert process.stderr is not None
        for line in process.stderr:
            self._lines.put(line)
        self._lines.put(None)

    def signal(self, signum: int) -> None:
        """Send a signal to the running collector."""
        if self._process is not None:
            self._process.send_signal(signum)

    def stop(self) -> list[dict[str, Any]]:
        """Send SIGTERM, wait for a clean exit, and return the events written."""
        process = self._process
        if process is None:
            return []
        process.send_signal(signal.SIGTERM)
        returncode = self.wait()
        if returncode != 0:
            raise RuntimeError(f"flowtrap run exited {returncode}:\n{self.stderr}")
        return read_events(self.events)

    def wait(self) -> int:
        """Wait for the collector to exit by itself; keep what it logged."""
        process = self._process
        if process is None:
            return 0
        try:
            process.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise RuntimeError("flowtrap run did not exit") from None
        if self._reader is not None:
            self._reader.join(self.timeout)
        rest = []
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                break
            rest.append(line)
        self.stderr = "".join(rest)
        self._process = None
        return process.returncode

    def __enter__(self) -> CollectorProcess:
        """Start on entering a with block."""
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        """Make sure the process is gone."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None


def read_events(path: Path) -> list[dict[str, Any]]:
    """Read a JSON-lines event file."""
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line]


async def send_payloads(
    payloads: Iterable[bytes], port: int, source: str = "127.0.0.1"
) -> int:
    """Send export packets over real UDP from one source address, in order."""
    # A bound (not connected) socket fixes the source address, so several
    # loopback addresses act as several exporters.
    stream = await asyncio_dgram.bind((source, 0))
    sent = 0
    try:
        for payload in payloads:
            await stream.send(payload, ("127.0.0.1", port))
            sent += 1
            # Keep a small burst from overrunning a busy receiver on loopback.
            await asyncio.sleep(0.002)
    finally:
        stream.close()
    return sent


def send_capture(capture: Path, port: int, source: str = "127.0.0.1") -> int:
    """Send every export packet of a capture file to 127.0.0.1:port."""
    payloads = [datagram.data for datagram in read_capture(capture)]
    return asyncio.run(send_payloads(payloads, port, source))
