"""Decode + detect on one core, in process: flowtrap beside the ``netflow`` package.

Per export version, a pool of export packets (one exporter per template layout)
is fed round after round to each contender; the contenders take turns, and each
keeps its best round, so drift on a shared machine hits them alike.

- ``flowtrap``: the pipeline ``flowtrap run`` builds (decoder, every enabled
  detector, windows), fed ``Datagram`` objects as the listener would.
- ``decode only``: flowtrap's decoder alone.
- ``netflow pkg``: ``netflow.utils.parse_packet`` plus the same protocol and port
  test on every record it returns (it has no detectors).
- ``iter_unpack``: one ``struct.iter_unpack`` per data flowset, nothing else: the
  ceiling for any Python decoder of these layouts.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from netflow.utils import parse_packet

from bench.inprocess import build_pipeline
from bench.packets import UDP, Clock, Mix, Packet, data_packets, template_packet
from bench.profiles import Profile
from collector.capture import Datagram
from collector.decoder import Decoder
from collector.service import settle_heap

CUPS_PORT = 631
# Export packets per layout in the pool (each 20-30 records).
PACKETS_PER_PROFILE = 24
# The netflow package names the protocol and port differently per version.
_NETFLOW_KEYS = {
    5: ("PROTO", "DST_PORT"),
    9: ("PROTOCOL", "L4_DST_PORT"),
    10: ("protocolIdentifier", "destinationTransportPort"),
}


@dataclass(slots=True)
class Stream:
    """The template packets and the pool of data packets for one version."""

    version: int
    profiles: list[Profile]
    templates: list[Datagram] = field(default_factory=list)
    data: list[Datagram] = field(default_factory=list)
    packets: list[Packet] = field(default_factory=list)

    @property
    def records(self) -> int:
        """Return the flow records in one pass over the pool."""
        return sum(packet.records for packet in self.packets)

    @property
    def findings(self) -> int:
        """Return the findings one pass over the pool should give."""
        return sum(packet.findings for packet in self.packets)


def build_stream(
    version: int, profiles: list[Profile], clock: Clock, mix: Mix | None = None
) -> Stream:
    """Build the pool: one exporter per profile, its packets interleaved."""
    stream = Stream(version, profiles)
    per_profile = []
    for index, profile in enumerate(profiles):
        exporter = f"192.0.2.{index + 1}"
        if version != 5:
            data = template_packet(profile, clock)
            stream.templates.append(Datagram(exporter, 2055, clock.export_secs, data))
        packets = data_packets(
            profile, mix or Mix(), clock, PACKETS_PER_PROFILE, index + 1
        )
        per_profile.append([(exporter, packet) for packet in packets])
    for row in zip(*per_profile, strict=True):
        for exporter, packet in row:
            stream.packets.append(packet)
            stream.data.append(Datagram(exporter, 2055, clock.export_secs, packet.data))
    return stream


def _rate(feed: Callable[[Datagram], Any], stream: Stream, seconds: float) -> float:
    """Feed the pool in passes for about ``seconds``; return records per second."""
    passes = 0
    data = stream.data
    start = time.perf_counter()
    while True:
        for datagram in data:
            feed(datagram)
        passes += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return passes * stream.records / elapsed


def netflow_decodes(profile: Profile, clock: Clock) -> bool:
    """Return True when the netflow package decodes this layout at all."""
    store: dict[str, Any] = {"netflow": {}, "ipfix": {}}
    try:
        if profile.version != 5:
            parse_packet(template_packet(profile, clock), store)
        for packet in data_packets(profile, Mix(), clock, 2, 0):
            parse_packet(packet.data, store)
    except Exception:  # any failure means "cannot decode this"
        return False
    return True


class Contenders:
    """The ways of reading one stream, each ready to be timed."""

    def __init__(self, stream: Stream, netflow_stream: Stream) -> None:
        """Prepare each contender and learn the templates; no timing yet."""
        self.version = stream.version
        self.pipeline = build_pipeline()
        self.decoder = Decoder()
        for datagram in stream.templates:
            self.pipeline.feed(datagram)
            self.decoder.decode(datagram.data, datagram.exporter, 2055, 0.0)
        self.netflow_templates: dict[str, dict[str, Any]] = {}
        for datagram in netflow_stream.templates:
            self.netflow(datagram)
        self.codecs = _codecs(stream.profiles)

    def flowtrap(self, datagram: Datagram) -> None:
        """Decode and detect, as ``flowtrap run`` does."""
        self.pipeline.feed(datagram)

    def decode_only(self, datagram: Datagram) -> None:
        """Decode with flowtrap's decoder alone."""
        self.decoder.decode(datagram.data, datagram.exporter, 2055, datagram.received)

    def netflow(self, datagram: Datagram) -> int:
        """Decode with the netflow package and test every record for UDP/631."""
        store = self.netflow_templates.setdefault(
            datagram.exporter, {"netflow": {}, "ipfix": {}}
        )
        protocol_key, port_key = _NETFLOW_KEYS[self.version]
        hits = 0
        for flow in parse_packet(datagram.data, store).flows:
            values = flow.data
            if values.get(protocol_key) == UDP and values.get(port_key) == CUPS_PORT:
                hits += 1
        return hits

    def iter_unpack(self, datagram: Datagram) -> None:
        """Split the data flowset with one precompiled struct, nothing else."""
        codec, skip = self.codecs[datagram.exporter]
        body = datagram.data[skip:]
        used = len(body) - len(body) % codec.size
        list(codec.iter_unpack(body[:used]))


def _codecs(profiles: list[Profile]) -> dict[str, tuple[struct.Struct, int]]:
    """Compile one struct per exporter for the iter_unpack ceiling."""
    codecs = {}
    for index, profile in enumerate(profiles):
        codes = "".join(
            {1: "B", 2: "H", 4: "I", 8: "Q"}.get(spec.length, f"{spec.length}s")
            for spec in profile.fields
        )
        # Skip the header, and the flowset header where there is one.
        skip = {5: 24, 9: 24, 10: 20}[profile.version]
        codecs[f"192.0.2.{index + 1}"] = (struct.Struct(">" + codes), skip)
    return codecs


@dataclass(slots=True)
class DecodeResult:
    """Best records/s of each contender for one version, and checks."""

    version: int
    layouts: int
    records_per_packet: float
    rates: dict[str, float]
    findings_expected: int
    findings_seen: int
    netflow_layouts: int


# Traffic without a single UDP/631 record: what a network without CUPS probes
# looks like to the default detector.
CLEAN = Mix(finding_share=0.0, near_miss_share=0.0)


def measure(
    stream: Stream,
    netflow_stream: Stream,
    seconds: float,
    rounds: int,
    clean: Stream | None = None,
) -> DecodeResult:
    """Time every contender in turns; keep each one's best round."""
    contenders = Contenders(stream, netflow_stream)
    # As `flowtrap run` does before it serves (every contender runs under it).
    settle_heap()
    # One untimed pass checks that the detector fires as the traffic says.
    for datagram in stream.data:
        contenders.flowtrap(datagram)
    seen = sum(contenders.pipeline.findings.values())
    runs: dict[str, tuple[Callable[[Datagram], Any], Stream]] = {
        "flowtrap": (contenders.flowtrap, stream),
        "decode only": (contenders.decode_only, stream),
        "iter_unpack": (contenders.iter_unpack, stream),
    }
    if netflow_stream.data:
        runs["netflow pkg"] = (contenders.netflow, netflow_stream)
    if clean is not None:
        # Same layouts and exporters, so the templates the pipeline learned serve.
        runs["flowtrap, no UDP/631"] = (contenders.flowtrap, clean)
    best: dict[str, float] = dict.fromkeys(runs, 0.0)
    for _ in range(rounds):
        for name, (feed, pool) in runs.items():
            best[name] = max(best[name], _rate(feed, pool, seconds))
    return DecodeResult(
        version=stream.version,
        layouts=len(stream.profiles),
        records_per_packet=stream.records / len(stream.data),
        rates=best,
        findings_expected=stream.findings,
        findings_seen=seen,
        netflow_layouts=len(netflow_stream.profiles),
    )


def pin(cpu: int) -> set[int]:
    """Pin this process to one core where the machine has it; return the old set."""
    before = os.sched_getaffinity(0)
    if cpu in before:
        os.sched_setaffinity(0, {cpu})
    return before
