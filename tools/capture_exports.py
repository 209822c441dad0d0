"""Record what each real exporter sends for the lab pcaps, as fixture pcaps.

For every case in ``EXPORTER_CASES`` this replays ``lab.pcap`` and
``lab-callback.pcap`` through the exporter, receives its export packets on a
UDP socket bound to 127.0.0.1, and writes them to
``tests/fixtures/exports/{exporter}-v{version}[-callback].pcap`` as
Ethernet/IPv4/UDP frames from 127.0.0.1:exporter-port to 127.0.0.1:2055,
stamped with the time each export packet arrived.  It then prints what tshark
decodes from each file so a person can check every conversation arrived.

Run ``python tools/make_lab_pcap.py tests/fixtures`` first.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dpkt

REPO = Path(__file__).resolve().parents[1]
# Run as a script, only tools/ is on sys.path; the exporter driver lives in tests/.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.exporters import (  # noqa: E402
    DEFAULT_TIMEOUT,
    EXPORTER_CASES,
    ExporterError,
    exporter_available,
    run_exporter,
)

#: The collector port the fixture frames are addressed to (tshark's cflow default).
FIXTURE_COLLECTOR_PORT = 2055

LOOPBACK = socket.inet_aton("127.0.0.1")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: Input pcaps and the suffix their fixtures get.
LAB_INPUTS: tuple[tuple[str, str], ...] = (
    ("lab.pcap", ""),
    ("lab-callback.pcap", "-callback"),
)

#: The tshark fields a person reads to check that each conversation arrived.
SUMMARY_FIELDS = (
    "cflow.srcaddr",
    "cflow.dstaddr",
    "cflow.srcaddrv6",
    "cflow.dstaddrv6",
    "cflow.srcport",
    "cflow.dstport",
    "cflow.protocol",
)


@dataclass(frozen=True)
class ExportDatagram:
    """One export packet as it arrived: wall-clock time, source port, bytes."""

    received_at: float
    exporter_port: int
    payload: bytes


def capture_case(
    name: str,
    version: int,
    pcap: Path,
    workdir: Path,
    quiet: float = 1.0,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[ExportDatagram]:
    """Replay ``pcap`` through one exporter and return every export packet it sent.

    Receiving stops once the exporter has exited and ``quiet`` seconds have
    passed with nothing more arriving, so late datagrams are not lost.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # A roomy buffer: the exporter may send its final flush in one burst.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    port: int = sock.getsockname()[1]
    failures: list[BaseException] = []

    def drive() -> None:
        """Run the exporter to completion, keeping any failure for the caller."""
        try:
            run_exporter(name, pcap, version, port, workdir, timeout)
        except BaseException as exc:  # re-raised in the calling thread below
            failures.append(exc)

    thread = threading.Thread(target=drive, name=f"{name}-v{version}", daemon=True)
    received: list[ExportDatagram] = []
    deadline = time.monotonic() + timeout + 10 * quiet
    last_activity = time.monotonic()
    exited = False
    with sock:
        thread.start()
        while True:
            try:
                data, (host, sport) = sock.recvfrom(65535)
            except TimeoutError:
                pass
            else:
                if host == "127.0.0.1":
                    received.append(ExportDatagram(time.time(), sport, data))
                    last_activity = time.monotonic()
            now = time.monotonic()
            if not exited and not thread.is_alive():
                exited = True
                last_activity = max(last_activity, now)
            if exited and now - last_activity >= quiet:
                break
            if now > deadline:
                raise ExporterError(f"{name} v{version}: capture did not finish")
    thread.join()
    if failures:
        raise failures[0]
    return received


def write_export_pcap(path: Path, datagrams: Sequence[ExportDatagram]) -> None:
    """Write export packets as loopback Ethernet/IPv4/UDP frames to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        writer = dpkt.pcap.Writer(fh, snaplen=65535, linktype=dpkt.pcap.DLT_EN10MB)
        for ip_id, dgram in enumerate(datagrams, start=1):
            udp = dpkt.udp.UDP(
                sport=dgram.exporter_port,
                dport=FIXTURE_COLLECTOR_PORT,
                ulen=8 + len(dgram.payload),
            )
            udp.data = dgram.payload
            ip = dpkt.ip.IP(
                id=ip_id & 0xFFFF,
                ttl=64,
                p=dpkt.ip.IP_PROTO_UDP,
                src=LOOPBACK,
                dst=LOOPBACK,
                data=udp,
            )
            frame = dpkt.ethernet.Ethernet(
                src=bytes(6), dst=bytes(6), type=dpkt.ethernet.ETH_TYPE_IP, data=ip
            )
            writer.writepkt_time(bytes(frame), dgram.received_at)


def _tshark(pcap: Path, *args: str) -> str:
    """Run tshark on ``pcap`` decoding UDP/2055 as NetFlow/IPFIX; return stdout."""
    cmd = [
        "tshark",
        "-r",
        str(pcap),
        "-d",
        f"udp.port=={FIXTURE_COLLECTOR_PORT},cflow",
        *args,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"tshark failed on {pcap}: {done.stderr.strip()}")
    return done.stdout


def _parse_tshark_time(text: str) -> datetime:
    """Parse tshark's absolute time, e.g. ``Jan 15, 2026 10:00:00.000000000 UTC``."""
    # Days below 10 come space-padded ("Jan  1"); fractions have 9 digits.
    stamp = " ".join(text.replace(" UTC", "").split())
    whole, _, fraction = stamp.partition(".")
    parsed = datetime.strptime(whole, "%b %d, %Y %H:%M:%S").replace(tzinfo=UTC)
    return parsed + timedelta(microseconds=int((fraction + "000000")[:6]))


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    """Yield every JSON object below ``node`` in document order."""
    if isinstance(node, dict):
        yield node
        for child in node.values():
            yield from _walk(child)
    elif isinstance(node, list):
        for child in node:
            yield from _walk(child)


def flow_rows(pcap: Path) -> list[str]:
    """Describe each flow record tshark decodes in ``pcap``, with absolute times.

    Records carrying IE 152/153 give absolute times directly.  sysUptime-
    relative IE 22/21 are anchored on the v5/v9 header (unix time minus
    uptime) or, for IPFIX, on the last systemInitTimeMilliseconds (IE 160)
    that an options record announced.
    """
    rows: list[str] = []
    system_init: datetime | None = None
    for packet in json.loads(_tshark(pcap, "-T", "json", "-J", "cflow")):
        cflow = packet["_source"]["layers"]["cflow"]
        boot: datetime | None = None
        if "cflow.sysuptime" in cflow and "cflow.timestamp" in cflow:
            # v9 headers carry whole seconds only, so this anchor can be 1 s early.
            boot = _parse_tshark_time(cflow["cflow.timestamp"]) - timedelta(
                seconds=float(cflow["cflow.sysuptime"])
            )
        for obj in _walk(cflow):
            if "cflow.sys_init_time" in obj:
                system_init = _parse_tshark_time(obj["cflow.sys_init_time"])
            if "cflow.protocol" not in obj:
                continue
            times = obj.get("cflow.timedelta_tree", {})
            start, end = _time_field(times, "start"), _time_field(times, "end")
            if start is None or end is None:
                rows.append(f"  {_endpoints(obj)}  (no times)")
                continue
            if isinstance(start, datetime) and isinstance(end, datetime):
                how = "absolute"
            else:
                anchor = boot if boot is not None else system_init
                how = "uptime+header" if boot is not None else "uptime+IE160"
                if anchor is None:
                    rows.append(f"  {_endpoints(obj)}  (no time anchor)")
                    continue
                start = _anchored(start, anchor)
                end = _anchored(end, anchor)
            rows.append(
                f"  {_endpoints(obj)}  {start:%Y-%m-%d %H:%M:%S.%f}"
                f" -> {end:%H:%M:%S.%f} ({how})"
            )
    return rows


def _time_field(times: dict[str, str], which: str) -> datetime | float | None:
    """Return a record's start or end as an absolute time or uptime seconds.

    tshark shows a sysUptime-relative time of exactly 0 as the absolute time
    1970-01-01 00:00:00, so that value counts as 0 s of uptime instead.
    """
    if f"cflow.time{which}" in times:
        return float(times[f"cflow.time{which}"])
    if f"cflow.abstime{which}" in times:
        moment = _parse_tshark_time(times[f"cflow.abstime{which}"])
        return 0.0 if moment == _EPOCH else moment
    return None


def _anchored(value: datetime | float, anchor: datetime) -> datetime:
    """Turn uptime seconds into an absolute time counted from ``anchor``."""
    if isinstance(value, datetime):
        return value
    return anchor + timedelta(seconds=value)


def _endpoints(record: dict[str, Any]) -> str:
    """Format a flow record's addresses, ports and protocol on one line."""
    src = record.get("cflow.srcaddr") or record.get("cflow.srcaddrv6", "?")
    dst = record.get("cflow.dstaddr") or record.get("cflow.dstaddrv6", "?")
    sport, dport = record.get("cflow.srcport", "-"), record.get("cflow.dstport", "-")
    left, right = f"{src}:{sport}", f"{dst}:{dport}"
    return f"{left:>24} -> {right:<24} proto {record['cflow.protocol']:>2}"


def describe_framing(payload: bytes) -> str:
    """Describe an export packet's header count and its sets as ``id:length``.

    This shows what tshark may hide: tshark stops a v9 packet after as many
    flowsets as the header's count, and softflowd counts data records only.
    """
    if len(payload) < 4:
        return f"{len(payload)} bytes, too short"
    version, count = struct.unpack_from("!HH", payload)
    header = {9: 20, 10: 16}.get(version)
    if header is None:
        return f"v{version} count={count}"
    label = "length" if version == 10 else "count"
    sets: list[str] = []
    offset = header
    while offset + 4 <= len(payload):
        set_id, set_len = struct.unpack_from("!HH", payload, offset)
        sets.append(f"{set_id}:{set_len}")
        if set_len < 4:
            sets.append("(bad set length)")
            break
        offset += set_len
    note = ""
    if version == 9 and count < len(sets):
        note = " (count below the number of sets: tshark stops early)"
    return f"v{version} {label}={count} sets={' '.join(sets)}{note}"


def summarize(pcap: Path, datagrams: int) -> None:
    """Print the datagram count, tshark's field decode and each flow record."""
    print(f"{pcap}: {datagrams} export packet(s)")
    with pcap.open("rb") as fh:
        for _ts, frame in dpkt.pcap.Reader(fh):
            payload = bytes(dpkt.ethernet.Ethernet(frame).data.data.data)
            print(f"  packet: {describe_framing(payload)}")
    if shutil.which("tshark") is None:
        print("  (tshark not installed: no decode)")
        return
    field_args = [arg for field in SUMMARY_FIELDS for arg in ("-e", field)]
    fields = _tshark(pcap, "-T", "fields", "-E", "occurrence=a", *field_args)
    for line in fields.splitlines():
        print(f"  fields: {line}")
    for row in flow_rows(pcap):
        print(row)


def main(argv: Sequence[str] | None = None) -> int:
    """Capture every exporter case for both lab pcaps and print what arrived."""
    parser = argparse.ArgumentParser(description="Record real exporter output.")
    parser.add_argument(
        "--pcap-dir",
        type=Path,
        default=REPO / "tests" / "fixtures",
        help="directory holding lab.pcap and lab-callback.pcap",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=REPO / "tests" / "fixtures" / "exports",
        help="directory the fixture pcaps are written to",
    )
    parser.add_argument(
        "--quiet",
        type=float,
        default=1.0,
        help="seconds of silence after the exporter exits before capture ends",
    )
    args = parser.parse_args(argv)
    pcap_dir: Path = args.pcap_dir
    out_dir: Path = args.out_dir
    for filename, _suffix in LAB_INPUTS:
        if not (pcap_dir / filename).is_file():
            parser.error(f"{pcap_dir / filename} is missing: run make_lab_pcap.py")
    written: list[tuple[Path, int]] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="flowtrap-exporters-") as tmp:
        for name, version in EXPORTER_CASES:
            if not exporter_available(name):
                print(f"{name}: not installed, skipping v{version}", file=sys.stderr)
                failed = True
                continue
            for filename, suffix in LAB_INPUTS:
                workdir = Path(tmp) / f"{name}-v{version}{suffix}"
                try:
                    datagrams = capture_case(
                        name, version, pcap_dir / filename, workdir, args.quiet
                    )
                except ExporterError as exc:
                    print(f"{name} v{version} {filename}: {exc}", file=sys.stderr)
                    failed = True
                    continue
                if not datagrams:
                    print(f"{name} v{version} {filename}: no export packets")
                    failed = True
                    continue
                target = out_dir / f"{name}-v{version}{suffix}.pcap"
                write_export_pcap(target, datagrams)
                written.append((target, len(datagrams)))
    for target, count in written:
        summarize(target, count)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
