"""The exporters the lab can capture with: softflowd (the default) and pmacctd.

Both capture live on the workstation's interface, export IPFIX to the
collector and expire a flow a few seconds after its last packet.  Both labs
start them with ``lab/exporter.sh``, which holds softflowd's options and points
pmacctd at ``lab/pmacctd.conf``.

softflowd 1.1.0 (Debian 12) processes live packets only once a 256 KiB
capture block is full, so it depends on the workstation's background burst at
the end of each round (``lab/traffic.py``); ``check_capturing`` tells when
that was not enough.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.exporters import exporter_path
from tools.lab_process import LabError

LAB = Path(__file__).resolve().parents[1] / "lab"
PMACCTD_CONFIG = LAB / "pmacctd.conf"
EXPORTER_SCRIPT = LAB / "exporter.sh"

EXPORT_PORT = 4739

EXPORTERS = ("softflowd", "pmacctd")

#: The exporter the specification names; lab/exporter.sh defaults to it too.
DEFAULT_EXPORTER = "softflowd"

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
    so the kernel hands packets over only when a 256 KiB ring block is full,
    never on a timer: on a quiet interface ``softflowctl statistics`` shows
    packets received by libpcap and none processed, and nothing is exported.
    Open upstream as irino/softflowd pull request 71.  The workstation's
    background burst fills a block each round; this error means it did not.
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
                "none: softflowd 1.1.0 hands packets over only in full 256 KiB "
                "capture blocks (no libpcap immediate mode; irino/softflowd PR 71) "
                "and the workstation's background burst did not fill one. "
                "Run the lab with a larger --background, or --exporter pmacctd."
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
    script = ["sh", str(EXPORTER_SCRIPT), name]
    if name == "pmacctd":
        # The core logs the link type once the capture is open; the nfprobe
        # plugin logs its receiver once it is ready to export.
        ready = ("link type is", "Exporting flows to")
        return Exporter(name, script, ready, workdir)
    control = [
        "-c",
        str(workdir / "softflowd.ctl"),
        "-p",
        str(workdir / "softflowd.pid"),
    ]
    ready = ("starting data collection", "Exporting flows from")
    return Exporter(name, [*script, *control], ready, workdir)
