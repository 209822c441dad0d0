"""Reading runs ahead of decoding: a slow decode leaves the kernel buffer empty."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

from collector.capture import Datagram
from collector.listener import Listener

PAYLOAD = b"\x00" * 1000


class SlowDecoder:
    """Takes ``seconds`` per datagram, as a datagram full of findings does."""

    def __init__(self, seconds: float) -> None:
        """Start with nothing decoded."""
        self.seconds = seconds
        self.decoded: list[Datagram] = []

    def __call__(self, datagram: Datagram) -> None:
        """Decode one datagram, slowly."""
        time.sleep(self.seconds)
        self.decoded.append(datagram)


def send_paced(port: int, count: int, gap: float) -> threading.Thread:
    """Send ``count`` datagrams to 127.0.0.1:port from a thread, one per ``gap``."""

    def run() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(count):
                sender.sendto(PAYLOAD, ("127.0.0.1", port))
                time.sleep(gap)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


async def wait_decoded(decoder: SlowDecoder, count: int, timeout: float) -> None:
    """Let the loop run until ``count`` datagrams are decoded or time is up."""
    deadline = time.monotonic() + timeout
    while len(decoder.decoded) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def test_a_slow_decode_is_absorbed_by_the_backlog_not_the_kernel() -> None:
    """Datagrams arrive twice as fast as they decode; the small kernel buffer
    (64 KiB asked) would overflow within 0.1 s, but the sockets keep being read
    between slices of decoding, so nothing is dropped."""
    decoder = SlowDecoder(0.001)
    listener = Listener(["127.0.0.1:0"], 65_536, decoder)
    loop = asyncio.get_running_loop()
    listener.start(loop)
    port = listener.sockets[0].getsockname()[1]
    try:
        sender = send_paced(port, 400, 0.0005)
        await wait_decoded(decoder, 400, 20.0)
        sender.join()
        (stats,) = listener.socket_stats()
    finally:
        listener.stop(loop)

    assert stats.drops == 0
    assert len(decoder.decoded) == listener.received == 400
    # Arrival times are taken when read, not when decoded.
    times = [datagram.received for datagram in decoder.decoded]
    assert times == sorted(times)
    assert times[-1] - times[0] < 0.5 * 400 * 0.001 + 0.2


async def test_a_full_backlog_pauses_reading_and_resumes_it() -> None:
    """Past its limit the backlog stops reading (counted) until half is decoded;
    what waited in the kernel meanwhile is read afterwards."""
    decoder = SlowDecoder(0.002)
    listener = Listener(["127.0.0.1:0"], 1 << 20, decoder, backlog_bytes=10_000)
    loop = asyncio.get_running_loop()
    listener.start(loop)
    port = listener.sockets[0].getsockname()[1]
    highest = 0
    try:
        sender = send_paced(port, 60, 0.0002)
        deadline = time.monotonic() + 20.0
        while len(decoder.decoded) < 60 and time.monotonic() < deadline:
            highest = max(highest, listener.backlog().bytes)
            await asyncio.sleep(0.001)
        sender.join()
        (stats,) = listener.socket_stats()
    finally:
        listener.stop(loop)

    backlog = listener.backlog()
    assert backlog.pauses >= 1
    assert highest <= 10_000 + len(PAYLOAD)
    assert stats.drops == 0
    assert len(decoder.decoded) == 60
    assert (backlog.datagrams, backlog.bytes) == (0, 0)


async def test_stop_decodes_the_backlog_and_what_the_kernel_holds() -> None:
    """Nothing read is left undecoded at stop, however far behind decoding is."""
    decoder = SlowDecoder(0.001)
    listener = Listener(["127.0.0.1:0"], 1 << 20, decoder)
    loop = asyncio.get_running_loop()
    listener.start(loop)
    port = listener.sockets[0].getsockname()[1]
    send_paced(port, 200, 0.0).join()
    # A few turns of the loop: some read and decoded, most still waiting.
    await asyncio.sleep(0.02)
    assert len(decoder.decoded) < 200
    listener.stop(loop)

    assert len(decoder.decoded) == listener.received == 200
    assert listener.backlog().datagrams == 0
