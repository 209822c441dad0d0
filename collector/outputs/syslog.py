"""Events as RFC 5424 syslog messages over UDP, TCP and TLS.

UDP sends one message per datagram (RFC 5426). TCP and TLS frame each message
by octet counting, ``LENGTH SP MESSAGE`` (RFC 6587 §3.4.1, RFC 5425 §4.3). The
message is the event's JSON document; its MSGID is the detector's name and its
``[meta sequenceId]`` (RFC 5424 §7.3.1) counts messages per output, so that a
receiver can see a gap.

Syslog has no acknowledgement. Before each write on a connection the output
checks whether the receiver has closed it, so a receiver that stops or
restarts loses nothing; one that vanishes without closing can lose what the
kernel had accepted for it.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from collector.outputs.base import QueuedOutput, QueueSettings, Undeliverable
from collector.outputs.message import Message, encode
from schemas.config import Target

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5,
    "lpr": 6, "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    "local0": 16, "local1": 17, "local2": 18, "local3": 19, "local4": 20,
    "local5": 21, "local6": 22, "local7": 23,
}  # fmt: skip

# The largest UDP payload over IPv4 (65,535 less the IP and UDP headers).
MAX_UDP_PAYLOAD = 65_507
# RFC 5424 §7.3.1: sequenceId runs from 1 to 2**31 - 1, then starts again at 1.
MAX_SEQUENCE = 2**31 - 1
SOFTWARE_VERSION = "0.1.0"


@dataclass(frozen=True, slots=True)
class SyslogSettings:
    """Message header fields and TLS material, from ``[output.syslog]``."""

    facility: str = "local0"
    app_name: str = "flowtrap"
    hostname: str = ""
    max_message_bytes: int = 8192
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str = ""


def severity(risk: int) -> int:
    """Map an event severity (0-100) to a syslog severity (RFC 5424 §6.2.1)."""
    if risk >= 90:
        return 2  # critical
    if risk >= 70:
        return 3  # error
    if risk >= 40:
        return 4  # warning
    if risk >= 20:
        return 5  # notice
    return 6  # informational


def _printable(text: str, limit: int) -> str:
    """Keep a header field to printable US-ASCII (RFC 5424 §6), or ``-``."""
    kept = "".join(c for c in text if "!" <= c <= "~")[:limit]
    return kept or "-"


class SyslogOutput(QueuedOutput):
    """Sends each event as one RFC 5424 message to one syslog receiver."""

    def __init__(
        self, target: Target, settings: QueueSettings, syslog: SyslogSettings
    ) -> None:
        """Remember the receiver; nothing connects until the first event."""
        super().__init__(target.text, settings)
        self.target = target
        self.syslog = syslog
        self.facility = FACILITIES[syslog.facility]
        self.hostname = _printable(syslog.hostname or socket.gethostname(), 255)
        self.app_name = _printable(syslog.app_name, 48)
        self.procid = str(os.getpid())
        self.sequence = 0
        self._sock: socket.socket | None = None
        self._tls: ssl.SSLContext | None = None

    def open(self) -> None:
        """Load the TLS material now, so that a bad file stops start-up."""
        if self.target.transport == "tls":
            self._tls = tls_context(self.syslog)

    @property
    def limit(self) -> int:
        """Return the largest message this output sends, header included."""
        if self.target.transport == "udp":
            return min(self.syslog.max_message_bytes, MAX_UDP_PAYLOAD)
        return self.syslog.max_message_bytes

    def encode(self, message: Message) -> bytes:
        """Build the RFC 5424 message, framed for the transport."""
        self.sequence = self.sequence % MAX_SEQUENCE + 1
        head = self.header(message, self.sequence)
        encoded = encode(message, self.limit - len(head))
        if encoded.removed:
            self.trimmed += 1
        if encoded.oversize and self.target.transport == "udp":
            raise Undeliverable("event too large for one syslog datagram")
        body = head + encoded.data
        if self.target.transport == "udp":
            return body
        return str(len(body)).encode() + b" " + body

    def header(self, message: Message, sequence: int) -> bytes:
        """Return ``<PRI>1 TIMESTAMP HOST APP PROCID MSGID [SD] `` (RFC 5424 §6)."""
        pri = self.facility * 8 + severity(message.severity)
        stamp = message.created.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        msgid = _printable(message.detector, 32)
        data = (
            f'[meta sequenceId="{sequence}"]'
            f'[origin software="flowtrap" swVersion="{SOFTWARE_VERSION}"]'
        )
        return (
            f"<{pri}>1 {stamp} {self.hostname} {self.app_name} {self.procid} "
            f"{msgid} {data} "
        ).encode()

    def send(self, payload: bytes) -> None:
        """Write one message, connecting (again) when needed."""
        if self._sock is not None and self._peer_closed(self._sock):
            self.disconnect()
        if self._sock is None:
            self._sock = self._connect()
        if self.target.transport == "udp":
            try:
                self._sock.send(payload)
            except OSError as error:
                if error.errno == errno.EMSGSIZE:
                    raise Undeliverable("event too large for a datagram") from None
                raise
        else:
            self._sock.sendall(payload)

    def disconnect(self) -> None:
        """Close the connection; the next send opens a new one."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if isinstance(sock, ssl.SSLSocket):
            try:
                sock.settimeout(1.0)
                sock.unwrap()
            except (OSError, ValueError):
                pass
        sock.close()

    def close(self) -> None:
        """Close the connection at the end."""
        self.disconnect()

    def _connect(self) -> socket.socket:
        """Open a socket to the receiver (TLS handshake included)."""
        host, port = self.target.host, self.target.port
        timeout = self.settings.connect_timeout
        if self.target.transport == "udp":
            family, kind, proto, _, address = socket.getaddrinfo(
                host, port, type=socket.SOCK_DGRAM
            )[0]
            sock = socket.socket(family, kind, proto)
            sock.connect(address)
            return sock
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if self._tls is None:
            return sock
        try:
            return self._tls.wrap_socket(
                sock, server_hostname=self.syslog.server_name or host
            )
        except (OSError, ValueError):
            sock.close()
            raise

    def _peer_closed(self, sock: socket.socket) -> bool:
        """Return True when the receiver has closed (or reset) the connection."""
        if self.target.transport == "udp":
            return False
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        timeout = sock.gettimeout()
        sock.setblocking(False)
        try:
            # A receiver sends nothing; readable means closed, reset, or a TLS
            # record such as a session ticket (which leaves nothing to read).
            return sock.recv(4096) == b""
        except (ssl.SSLWantReadError, BlockingIOError):
            return False
        except OSError:
            return True
        finally:
            sock.settimeout(timeout)


def tls_context(syslog: SyslogSettings) -> ssl.SSLContext:
    """Build the client TLS context: verify the server, maybe present a cert."""
    context = ssl.create_default_context(
        cafile=str(syslog.ca_file) if syslog.ca_file else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if syslog.cert_file is not None and syslog.key_file is not None:
        context.load_cert_chain(syslog.cert_file, syslog.key_file)
    return context
