"""Processes of the network-namespace lab: start, wait for, stop; and signals.

Every lab process runs in its own session, so that a Ctrl-C in the terminal
reaches only the lab driver, which then stops them in order and tears the
namespaces down; and so that stopping one reaches its children too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

#: Seconds any one process may take to start, finish or stop.
STEP_TIMEOUT = 30.0

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class LabError(RuntimeError):
    """A lab step failed; the message says which, with the process's output."""


class LabInterruptedError(LabError):
    """SIGTERM or SIGHUP arrived while the lab ran."""

    def __init__(self, signum: int):
        """Remember which signal arrived."""
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


@dataclass
class Background:
    """One long-running lab process whose output goes to a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(
        cls, name: str, command: Sequence[str], log: Path, cwd: Path
    ) -> Background:
        """Start ``command`` in its own session, its output going to ``log``."""
        with log.open("wb") as sink:
            process = subprocess.Popen(
                list(command),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )
        return cls(name, process, log)

    def text(self) -> str:
        """Return everything the process has written so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, marker: str, timeout: float = STEP_TIMEOUT) -> None:
        """Wait until the log shows ``marker``; raise if the process dies first."""
        deadline = time.monotonic() + timeout
        while marker not in self.text():
            if self.process.poll() is not None:
                raise LabError(
                    f"{self.name} exited {self.process.returncode}:\n{self.text()}"
                )
            if time.monotonic() > deadline:
                raise LabError(f"{self.name} did not say {marker!r}:\n{self.text()}")
            time.sleep(0.05)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STEP_TIMEOUT) -> int:
        """Send ``signum``, wait for the exit (SIGKILL past the timeout), return it."""
        if self.process.poll() is None:
            # Its own session: the group is this process and its children only.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into an exception, so that teardown still runs.

    SIGINT already raises KeyboardInterrupt.
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise LabInterruptedError(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in _STOP_SIGNALS[1:]}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Ignore SIGINT, SIGTERM and SIGHUP, so a second Ctrl-C cannot cut teardown."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
