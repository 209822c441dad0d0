"""The exporters the lab can capture with: pmacctd (the default) and softflowd.

Both capture live on the workstation's interface, export IPFIX to the
collector and expire a flow a few seconds after its last packet.  pmacctd
reads ``lab/pmacctd.conf``, the file the docker-compose lab uses too.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.exporters import exporter_path
from tools.lab_netns import CAPTURE_INTERFACE, COLLECTOR
from tools.lab_process import LabError

PMACCTD_CONFIG = Path(__file__).resolve().parents[1] / "lab" / "pmacctd.conf"

EXPORT_PORT = 4739

EXPORTERS = ("pmacctd", "softflowd")

#: softflowd 1.1.0 (Debian 12) never processes packets captured live on a
#: quiet interface (see SoftflowdStalledError), so pmacctd is the default.
DEFAULT_EXPORTER = "pmacctd"

#: softflowd's timeouts, the same as nfprobe_timeouts in lab/pmacctd.conf.
SOFTFLOWD_TIMEOUTS = ("udp=3", "tcp=3", "tcp.fin=1", "maxlife=10", "expint=1")

#: pmacctd log lines that mean it did not run as configured: it only warns
#: about an unknown config key and carries on with the default.
_PMACCTD_PROBLEMS = ("ERROR", "WARN: [")

_SOFTFLOWD_STATS = re.compile(
    r"Packets processed: (?P<processed>\d+).*"
    r"Packets received by libpcap: (?P<received>\d+)",
    re.DOTALL,
)


class SoftflowdStalledError(LabError):
    """softflowd captured packets but never processed them.

    softflowd 1.1.0 opens its live capture without libpcap's immediate mode,
    so on a quiet interface the packets wait in a ring block that is never
    handed over: ``softflowctl statistics`` shows packets received by libpcap
    and none processed, and nothing is exported.  Open upstream as
    irino/softflowd pull request 71.
    """


@dataclass(frozen=True)
class Exporter:
    """How to run one exporter in the lab, and how to tell it is capturing."""

    name: str
    command: list[str]
    #: Log lines that, all present, mean the capture is open and export ready.
    ready: tuple[str, ...]
    workdir: Path

    @property
    def control(self) -> Path:
        """softflowd's control socket."""
        return self.workdir / "softflowd.ctl"

    def check_capturing(self) -> None:
        """Raise SoftflowdStalledError if softflowd processed none of its packets."""
        if self.name != "softflowd":
            return
        softflowctl = exporter_path("softflowctl") or "softflowctl"
        # Give a working softflowd a moment to reach its next read.
        deadline = time.monotonic() + 3.0
        while True:
            done = subprocess.run(
                [softflowctl, "-c", str(self.control), "statistics"],
                capture_output=True,
                text=True,
                check=False,
            )
            match = _SOFTFLOWD_STATS.search(done.stdout)
            if match is None:
                raise LabError(f"softflowctl statistics:\n{done.stdout}{done.stderr}")
            processed, received = int(match["processed"]), int(match["received"])
            if processed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if processed == 0 and received > 0:
            raise SoftflowdStalledError(
                f"softflowd received {received} packets by libpcap and processed "
                "none: softflowd 1.1.0 does not hand packets over on a quiet live "
                "interface (no libpcap immediate mode; irino/softflowd PR 71). "
                "Run the lab with --exporter pmacctd."
            )

    def check_log(self, log: str) -> None:
        """Raise if pmacctd logged that it did not run as configured."""
        problems = [
            line
            for line in log.splitlines()
            if self.name == "pmacctd" and line.lstrip().startswith(_PMACCTD_PROBLEMS)
        ]
        if problems:
            raise LabError("pmacctd logged problems:\n" + "\n".join(problems))


def exporter(name: str, workdir: Path) -> Exporter:
    """Return how to run exporter ``name`` with its files in ``workdir``."""
    binary = exporter_path(name)
    if name not in EXPORTERS:
        raise ValueError(f"unknown exporter {name!r}; the lab knows {EXPORTERS}")
    if binary is None:
        package = "pmacct" if name == "pmacctd" else name
        raise LabError(f"{name} is not installed (apt-get install {package})")
    if name == "pmacctd":
        # The core logs the link type once the capture is open; the nfprobe
        # plugin logs its receiver once it is ready to export.
        ready = ("link type is", "Exporting flows to")
        return Exporter(name, [binary, "-f", str(PMACCTD_CONFIG)], ready, workdir)
    command = [
        binary,
        "-d",
        "-i",
        CAPTURE_INTERFACE,
        "-v",
        "10",
        "-n",
        f"{COLLECTOR}:{EXPORT_PORT}",
        "-c",
        str(workdir / "softflowd.ctl"),
        "-p",
        str(workdir / "softflowd.pid"),
        *(option for timeout in SOFTFLOWD_TIMEOUTS for option in ("-t", timeout)),
        # Its own export packets cross the same interface: leave them out.
        f"not (udp and port {EXPORT_PORT})",
    ]
    return Exporter(name, command, ("starting data collection",), workdir)
