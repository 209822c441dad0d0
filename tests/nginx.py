"""nginx's stream module as a real UDP load balancer on 127.0.0.1, for tests.

Each test starts its own nginx with its own configuration, pid file and error
log under a temporary directory, in the foreground (``daemon off;``), and stops
it again. It listens on 127.0.0.1 only, on a port the kernel handed out.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import pytest

# Debian's libnginx-mod-stream puts the module here.
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
INSTALL = "apt-get install nginx libnginx-mod-stream"

# What the README shows, with the addresses filled in per test. One session
# per datagram (proxy_responses 0): exporters expect no answer, and nginx then
# holds no per-exporter state beyond the hash.
CONFIG = """\
load_module {module};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log notice;
worker_processes 1;
events {{ worker_connections 256; }}
stream {{
    upstream flowtrap {{
        hash $remote_addr consistent;
{servers}
    }}
    server {{
        listen 127.0.0.1:{port} udp;
        proxy_pass flowtrap;
        proxy_protocol on;
        proxy_responses 0;
    }}
}}
"""


def require_nginx() -> str:
    """Return nginx's path; skip without it (or its stream module) unless CI."""
    path = shutil.which("nginx")
    if path is not None and STREAM_MODULE.is_file():
        return path
    message = f"nginx with its stream module is not installed ({INSTALL})"
    if os.environ.get("FLOWTRAP_REQUIRE_EXPORTERS"):
        pytest.fail(f"{message}; FLOWTRAP_REQUIRE_EXPORTERS forbids skipping")
    pytest.skip(message)


def free_udp_port() -> int:
    """Return a UDP port on 127.0.0.1 that the kernel just handed out."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class NginxBalancer:
    """nginx balancing UDP by exporter to backends on 127.0.0.1."""

    def __init__(self, prefix: Path, backends: Sequence[int], timeout: float = 10.0):
        """Write nothing yet; start() writes the configuration and runs nginx."""
        self.prefix = prefix
        self.backends = list(backends)
        self.timeout = timeout
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def error_log(self) -> Path:
        """nginx's own log, in the prefix."""
        return self.prefix / "error.log"

    def start(self) -> NginxBalancer:
        """Start nginx in the foreground and wait until its worker runs."""
        nginx = require_nginx()
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.port = free_udp_port()
        servers = "\n".join(f"        server 127.0.0.1:{p};" for p in self.backends)
        config = self.prefix / "nginx.conf"
        config.write_text(
            CONFIG.format(
                module=STREAM_MODULE,
                prefix=self.prefix,
                servers=servers,
                port=self.port,
            )
        )
        # -e: the error log before the configuration is read is ours too, not
        # the compiled-in /var/log/nginx/error.log.
        command = [nginx, "-p", str(self.prefix), "-c", str(config)]
        command += ["-e", str(self.error_log), "-g", "daemon off;"]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            if self.error_log.exists() and (
                "start worker process" in self.error_log.read_text()
            ):
                return self
            time.sleep(0.05)
        self.stop()
        log = self.error_log.read_text() if self.error_log.exists() else ""
        raise RuntimeError(f"nginx did not start:\n{log}")

    def stop(self) -> None:
        """Stop nginx (SIGQUIT lets the worker finish what it holds) and wait."""
        process = self._process
        if process is None:
            return
        self._process = None
        if process.poll() is None:
            process.send_signal(signal.SIGQUIT)
            try:
                process.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> NginxBalancer:
        """Start on entering a with block."""
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        """Make sure nginx is gone."""
        self.stop()
