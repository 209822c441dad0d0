"""A real rsyslogd on 127.0.0.1 for the syslog tests, and TLS material for it.

Each instance runs Debian's rsyslogd in the foreground with its own config,
work directory and pid file in a temporary directory; it touches nothing of
the system's syslog. It writes every message it receives, as rsyslog parsed
it, as one JSON object per line, so a test reads back what a SIEM would see.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# Debian installs rsyslog's modules under /usr/lib/<architecture triplet>/.
RSYSLOG_TLS_DRIVER = "/usr/lib/*/rsyslog/lmnsd_gtls.so"
STARTUP_SECONDS = 15.0

# Every property a SIEM would key on, one JSON field each (rsyslog "jsonf").
_TEMPLATE = """
template(name="parsed" type="list" option.jsonf="on") {
  property(outname="pri" name="pri" format="jsonf")
  property(outname="version" name="protocol-version" format="jsonf")
  property(outname="timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app_name" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="structured_data" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
}
"""


def require_rsyslog(tls: bool = False) -> str:
    """Return rsyslogd's path; skip without it, or fail when CI requires it."""
    path = shutil.which("rsyslogd") or shutil.which("rsyslogd", path="/usr/sbin")
    missing = path is None
    if tls and not list(Path("/").glob(RSYSLOG_TLS_DRIVER.lstrip("/"))):
        missing = True
    if not missing and path is not None:
        return path
    message = "rsyslogd (and rsyslog-gnutls for TLS) is not installed"
    if os.environ.get("FLOWTRAP_REQUIRE_EXPORTERS"):
        pytest.fail(f"{message}; FLOWTRAP_REQUIRE_EXPORTERS forbids skipping")
    pytest.skip(message)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A test CA and a server certificate for 127.0.0.1, as PEM files."""

    ca: Path
    cert: Path
    key: Path


def make_tls(directory: Path, name: str = "127.0.0.1") -> TlsFiles:
    """Write a fresh CA and a server certificate (IP SAN ``name``) signed by it."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flowtrap test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(name))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(
        directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    )
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def free_udp_port() -> int:
    """Return a UDP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Rsyslog:
    """One rsyslogd receiving syslog over UDP, TCP or TLS on 127.0.0.1."""

    def __init__(
        self, directory: Path, transport: str, tls: TlsFiles | None = None
    ) -> None:
        """Remember where to run; nothing starts until start()."""
        self.binary = require_rsyslog(tls=transport == "tls")
        self.directory = directory
        self.transport = transport
        self.tls = tls
        self.port = 0
        self.received = directory / "received.jsonl"
        self._process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def start(self, port: int = 0) -> Rsyslog:
        """Start rsyslogd (on ``port``, or a free one) and wait until it listens."""
        port_file = self.directory / "port"
        port_file.unlink(missing_ok=True)
        if self.transport == "udp" and port == 0:
            port = free_udp_port()
        config = self.directory / "rsyslog.conf"
        config.write_text(self._config(port, port_file))
        log = (self.directory / "rsyslogd.log").open("ab")
        self._process = subprocess.Popen(
            [self.binary, "-n", "-f", str(config), "-i", str(self.directory / "pid")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        self.port = port or self._read_port(port_file)
        self._wait_listening()
        return self

    def stop(self) -> None:
        """Stop rsyslogd and wait until it has exited (its sockets closed)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STARTUP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def messages(self) -> list[dict[str, Any]]:
        """Return every message received so far, without the readiness probes."""
        if not self.received.exists():
            return []
        lines = self.received.read_bytes().splitlines()
        parsed = [orjson.loads(line) for line in lines if line.strip()]
        return [m for m in parsed if m.get("msgid") != "probe"]

    def wait_for(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Wait until ``count`` messages arrived; return them."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages()
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def __enter__(self) -> Rsyslog:
        """Start on entering a with block."""
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """Make sure rsyslogd is gone."""
        self.stop()

    def _config(self, port: int, port_file: Path) -> str:
        """Write rsyslogd's whole configuration."""
        work = self.directory / "work"
        work.mkdir(exist_ok=True)
        tls = self.tls
        global_options = f'workDirectory="{work}"'
        if tls is not None:
            global_options += (
                f' defaultNetstreamDriverCAFile="{tls.ca}"'
                f' defaultNetstreamDriverCertFile="{tls.cert}"'
                f' defaultNetstreamDriverKeyFile="{tls.key}"'
            )
        lines = [f"global({global_options})"]
        if self.transport == "udp":
            lines += [
                'module(load="imudp")',
                f'input(type="imudp" address="127.0.0.1" port="{port}" '
                'ruleset="received")',
            ]
        else:
            driver = ""
            if self.transport == "tls":
                driver = (
                    ' streamDriver.name="gtls" streamDriver.mode="1"'
                    ' streamDriver.authMode="anon"'
                )
            lines += [
                f'module(load="imtcp"{driver})',
                f'input(type="imtcp" address="127.0.0.1" port="{port}" '
                f'listenPortFileName="{port_file}" ruleset="received")',
            ]
        lines += [
            _TEMPLATE,
            'ruleset(name="received") {',
            f'  action(type="omfile" file="{self.received}" template="parsed")',
            "}",
        ]
        return "\n".join(lines) + "\n"

    def _read_port(self, port_file: Path) -> int:
        """Wait for rsyslogd to write the port it bound."""
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            self._check_alive()
            if port_file.exists() and port_file.read_text().strip():
                return int(port_file.read_text())
            time.sleep(0.05)
        raise RuntimeError(f"rsyslogd did not listen: {self._log()}")

    def _wait_listening(self) -> None:
        """Wait until a message sent now would be received."""
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            self._check_alive()
            if self.transport == "udp":
                if self._probe_udp():
                    return
            else:
                try:
                    socket.create_connection(("127.0.0.1", self.port), 1).close()
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"rsyslogd did not listen: {self._log()}")

    def _probe_udp(self) -> bool:
        """Send one probe datagram; return True once any probe was received."""
        probe = b"<14>1 - - flowtrap-test - probe - ready?"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(probe, ("127.0.0.1", self.port))
        time.sleep(0.1)
        return self.received.exists() and b'"probe"' in self.received.read_bytes()

    def _check_alive(self) -> None:
        """Fail at once if rsyslogd exited."""
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError(f"rsyslogd exited: {self._log()}")

    def _log(self) -> str:
        """Return what rsyslogd said."""
        path = self.directory / "rsyslogd.log"
        return path.read_text(errors="replace") if path.exists() else ""
