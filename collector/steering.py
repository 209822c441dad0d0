"""Steering a SO_REUSEPORT group by source address: one exporter, one worker.

A three-instruction classic BPF program on the group loads the last four bytes
of the datagram's source address (the whole address for IPv4) and returns
them modulo the number of sockets; the kernel delivers to the group member
with that index, the order the sockets were bound in. The kernel's own
reuseport hash takes the source port too, so an exporter that restarts on a
new port would move; this does not.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct

# Linux's SO_ATTACH_REUSEPORT_CBPF (asm-generic/socket.h) and the classic BPF
# offset of the network header (linux/filter.h); Python names neither.
SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)
SKF_NET_OFF = -0x100000
# Where the source address's last four bytes sit in the IP header.
_SOURCE_WORD = {socket.AF_INET: 12, socket.AF_INET6: 20}
_BPF_INSTRUCTION = struct.Struct("HBBI")
_BPF_LD_W_ABS = 0x20
_BPF_ALU_MOD_K = 0x94
_BPF_RET_A = 0x16


def steered(address: str, workers: int) -> int:
    """Return the group member the program picks for a source address."""
    packed = ipaddress.ip_address(address).packed
    return int.from_bytes(packed[-4:], "big") % workers


def steer_by_source(sock: socket.socket, workers: int) -> None:
    """Attach the steering program to a socket's reuseport group of N."""
    word = _SOURCE_WORD[sock.family]
    program = b"".join(
        _BPF_INSTRUCTION.pack(code, 0, 0, value & 0xFFFFFFFF)
        for code, value in (
            (_BPF_LD_W_ABS, SKF_NET_OFF + word),
            (_BPF_ALU_MOD_K, workers),
            (_BPF_RET_A, 0),
        )
    )
    filters = ctypes.create_string_buffer(program)
    # struct sock_fprog: the instruction count, then a pointer to them.
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(filters))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
