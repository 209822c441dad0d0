"""Drive the real flow exporters, softflowd and pmacctd, against a pcap file.

Each ``run_*`` function replays a capture file through one exporter, which
sends its export packets to ``127.0.0.1:port`` and then exits by itself; the
function returns once it has exited cleanly.  Nothing here opens a socket: the
caller binds the receiving UDP socket first and reads it while the exporter
runs (in another thread), as ``tools/capture_exports.py`` does.

This module has no pytest dependency, so tools can import it as well as tests.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

#: Every (exporter, export version) pair the fixtures and tests cover.
EXPORTER_CASES: list[tuple[str, int]] = [
    ("softflowd", 5),
    ("softflowd", 9),
    ("softflowd", 10),
    ("pmacctd", 9),
    ("pmacctd", 10),
]

#: Export versions each exporter is driven with here.
SUPPORTED_VERSIONS: dict[str, tuple[int, ...]] = {
    "softflowd": (5, 9, 10),
    "pmacctd": (9, 10),
}

#: Seconds an exporter may take over a small lab pcap; pmacctd alone sleeps 2 s.
DEFAULT_TIMEOUT = 60.0

#: Debian installs both exporters in sbin, which a non-login PATH may lack.
_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")

#: pmacctd log lines that mean its run is not trustworthy even when it exits 0:
#: an unknown config value is only warned about and silently replaced by the
#: default (an invalid ``nfprobe_version`` quietly exports NetFlow v5).
_PMACCTD_BAD_LINES = ("ERROR", "WARN: [")


class ExporterError(RuntimeError):
    """An exporter could not be found, failed, or did not exit in time."""


def exporter_path(name: str) -> str | None:
    """Return the full path of exporter ``name``, or None if it is not installed."""
    found = shutil.which(name)
    if found is not None:
        return found
    return shutil.which(name, path=os.pathsep.join(_SBIN_DIRS))


def exporter_available(name: str) -> bool:
    """Return True if exporter ``name`` (``softflowd`` or ``pmacctd``) is installed."""
    return exporter_path(name) is not None


def _require(name: str, version: int) -> str:
    """Return the exporter's path after checking it exists and knows ``version``."""
    if version not in SUPPORTED_VERSIONS.get(name, ()):
        raise ValueError(f"{name} is not driven with export version {version}")
    path = exporter_path(name)
    if path is None:
        raise ExporterError(f"{name} is not installed (looked on PATH and in sbin)")
    return path


def _run(cmd: Sequence[str], cwd: Path, timeout: float) -> str:
    """Run ``cmd`` to completion and return its stderr; raise if it fails or hangs.

    The exporter gets its own session so that, on a hang, the whole process
    group (pmacctd forks a plugin process) is killed rather than only its head.
    """
    shown = shlex.join(cmd)
    proc = subprocess.Popen(
        list(cmd),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise ExporterError(
            f"{shown} did not exit within {timeout:g} s; stderr:\n{stderr.strip()}"
        ) from None
    if proc.returncode != 0:
        raise ExporterError(
            f"{shown} exited with status {proc.returncode}; stderr:\n"
            f"{stderr.strip()}\nstdout:\n{stdout.strip()}"
        )
    return stderr


def softflowd_command(pcap: Path, version: int, port: int, workdir: Path) -> list[str]:
    """Return the softflowd command line that exports ``pcap`` to 127.0.0.1:port.

    ``-a`` makes flow expiry and every exported time follow the pcap's own
    clock; without it the times are wall-clock sysUptime offsets that do not
    match the header (see EXPORTERS.md).  ``-c none`` stops softflowd from
    waiting on its control socket after the file ends, and ``-6`` tracks IPv6.
    """
    return [
        _require("softflowd", version),
        "-d",
        "-6",
        "-a",
        "-r",
        str(pcap.resolve()),
        "-v",
        str(version),
        "-n",
        f"127.0.0.1:{port}",
        "-c",
        "none",
        "-p",
        str((workdir / f"softflowd-v{version}.pid").resolve()),
    ]


def run_softflowd(
    pcap: Path,
    version: int,
    port: int,
    workdir: Path,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """Replay ``pcap`` through softflowd exporting version 5, 9 or 10 to the port.

    softflowd flushes every flow when the file ends and exits 0; a small file
    goes out in a single export packet.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    _run(softflowd_command(pcap, version, port, workdir), workdir, timeout)


def pmacctd_config(pcap: Path, version: int, port: int) -> str:
    """Return a pmacctd config that exports ``pcap`` through its nfprobe plugin.

    The default nfprobe timeouts (UDP 300 s, TCP 3600 s) are kept: pmacctd
    expires flows by the pcap's clock and flushes all the rest when the file
    ends, so every flow of a short lab file leaves in the final flush.
    """
    return "\n".join(
        [
            "daemonize: false",
            f"pcap_savefile: {pcap.resolve()}",
            "plugins: nfprobe",
            f"nfprobe_receiver: 127.0.0.1:{port}",
            f"nfprobe_version: {version}",
            "aggregate: src_host, dst_host, src_port, dst_port, proto, tos",
            "",
        ]
    )


def run_pmacctd(
    pcap: Path,
    version: int,
    port: int,
    workdir: Path,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """Replay ``pcap`` through pmacctd's nfprobe plugin, NetFlow v9 or IPFIX.

    pmacctd sleeps about 2 s before reading the file, then flushes and exits.
    """
    binary = _require("pmacctd", version)
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / f"pmacctd-v{version}.conf"
    config.write_text(pmacctd_config(pcap, version, port))
    cmd = [binary, "-f", str(config.resolve())]
    stderr = _run(cmd, workdir, timeout)
    bad = [
        line
        for line in stderr.splitlines()
        if line.lstrip().startswith(_PMACCTD_BAD_LINES)
    ]
    if bad:
        raise ExporterError(
            f"{shlex.join(cmd)} exited 0 but logged problems:\n" + "\n".join(bad)
        )


def run_exporter(
    name: str,
    pcap: Path,
    version: int,
    port: int,
    workdir: Path,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """Replay ``pcap`` through exporter ``name``, one of ``EXPORTER_CASES``' names."""
    if name == "softflowd":
        run_softflowd(pcap, version, port, workdir, timeout)
    elif name == "pmacctd":
        run_pmacctd(pcap, version, port, workdir, timeout)
    else:
        raise ValueError(f"unknown exporter {name!r}")
