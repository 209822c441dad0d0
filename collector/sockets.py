"""UDP sockets as flowtrap opens them, and what the kernel says about them.

Binding with a receive buffer forced past the kernel's cap where allowed (and
advice when binding fails), the bound address as text, and each socket's
drops and queue from /proc/net/udp.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from schemas.config import parse_endpoint

log = logging.getLogger(__name__)

# Linux's SO_RCVBUFFORCE (asm-generic/socket.h); Python's socket module lacks it.
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
# The kernel's table of UDP sockets, with each socket's receive-queue drops.
PROC_UDP = (Path("/proc/net/udp"), Path("/proc/net/udp6"))


@dataclass(frozen=True, slots=True)
class SocketStats:
    """What the kernel says about one listening socket."""

    endpoint: str
    drops: int
    queued_bytes: int
    buffer_bytes: int


def open_socket(
    endpoint: str, receive_buffer: int, reuse_port: bool = False
) -> socket.socket:
    """Bind a non-blocking UDP socket with a large receive buffer.

    ``reuse_port`` joins the socket to a SO_REUSEPORT group on the same
    address (one socket per worker process).
    """
    host, port = parse_endpoint(endpoint)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        _size_buffer(sock, endpoint, receive_buffer)
        if family == socket.AF_INET6:
            # Accept IPv4-mapped exporters only on an explicit IPv4 listener.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            advice = "another program listens there; pick a free port"
        elif error.errno == errno.EADDRNOTAVAIL:
            advice = "that address is not on this host; use one of its addresses"
        elif error.errno == errno.EACCES:
            advice = "ports under 1024 need CAP_NET_BIND_SERVICE; pick a higher one"
        elif error.errno == errno.EINVAL:
            advice = "use an IPv4 address or a plain IPv6 one (not IPv4-mapped)"
        else:
            advice = "check the address"
        raise OSError(
            f"cannot listen on {endpoint}: {error.strerror}; {advice} "
            "with --listen HOST:PORT"
        ) from error
    sock.setblocking(False)
    return sock


def _size_buffer(sock: socket.socket, endpoint: str, wanted: int) -> None:
    """Ask for a receive buffer; past net.core.rmem_max, force it if allowed.

    The buffer is what rides out a burst (a flood of findings, a slow disk):
    the kernel caps SO_RCVBUF at net.core.rmem_max (often 208 kB to 4 MB),
    while a process with CAP_NET_ADMIN may set any size with SO_RCVBUFFORCE.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
    # The kernel reports twice what was asked, for its own bookkeeping.
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 2 * wanted:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, wanted)
    except PermissionError:
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
        log.warning(
            "receive buffer smaller than asked; raise net.core.rmem_max "
            "(sysctl -w net.core.rmem_max=N) or grant CAP_NET_ADMIN",
            extra={"endpoint": endpoint, "asked": wanted, "granted": granted},
        )


def socket_stats(sockets: list[socket.socket]) -> list[SocketStats]:
    """Read the kernel's receive drops and queue for each of the sockets.

    Datagrams the kernel dropped because flowtrap did not read fast enough
    never reach the decoder; /proc/net/udp counts them per socket.
    """
    inodes: dict[int, socket.socket] = {}
    for sock in list(sockets):
        try:
            inodes[os.fstat(sock.fileno()).st_ino] = sock
        except (OSError, ValueError):
            continue
    found = []
    for table in PROC_UDP:
        for inode, drops, queued in _udp_table(table):
            mine = inodes.get(inode)
            if mine is None:
                continue
            buffer = mine.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            found.append(SocketStats(bound(mine), drops, queued, buffer))
    return found


def _udp_table(path: Path) -> list[tuple[int, int, int]]:
    """Return (inode, drops, receive queue bytes) for each row of /proc/net/udp."""
    try:
        lines = path.read_text().splitlines()[1:]
    except OSError:
        return []
    rows = []
    for line in lines:
        fields = line.split()
        if len(fields) < 13:
            continue
        queued = int(fields[4].partition(":")[2], 16)
        rows.append((int(fields[9]), int(fields[12]), queued))
    return rows


def bound(sock: socket.socket) -> str:
    """Format a socket's bound address as HOST:PORT."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
