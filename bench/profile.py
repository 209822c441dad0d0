"""Where the time goes: py-spy on a saturated ``flowtrap run``, pyinstrument in process.

py-spy samples the live collector while the sender pushes more than it can take,
so every sample is work, not waiting; the collapsed stacks are summed into time
spent in each function itself and time spent under it. pyinstrument records one
in-process decode + detect run as a call tree, saved beside the results.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.collectors import ROOT, Flowtrap
from bench.decode import Contenders, Stream, _rate
from bench.sender import Exporter, Plan, write_plan

# Frames under these count as "inside" for the inclusive column of the report.
_KEY_FUNCTIONS = (
    "_drain",
    "_decode_slice",
    "feed",
    "decode",
    "_detect",
    "_candidates",
    "build_flow",
    "rows",
    "_emit",
    "to_event",
    "write",
    "advance",
)
_FRAME = re.compile(r"^(?P<function>.+?) \((?P<file>[^:()]+)(?::\d+)?\)$")


@dataclass(slots=True)
class Profile:
    """Samples by function: its own time and the time under it."""

    samples: int = 0
    own: dict[str, int] = field(default_factory=dict)
    under: dict[str, int] = field(default_factory=dict)
    error: str = ""


def _name(frame: str) -> str:
    """Turn a py-spy frame into ``module.py:function``."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match.group("file")
    return f"{Path(path).name}:{match.group('function')}"


def parse_collapsed(text: str) -> Profile:
    """Sum py-spy's raw (collapsed) stacks into own and inclusive samples."""
    samples = 0
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_name(frame) for frame in stack.split(";") if frame]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for name in set(frames):
            under[name] += count
    return Profile(samples, dict(own.most_common()), dict(under.most_common()))


def live(pool: list[Exporter], rate: float, seconds: float, out: Path) -> Profile:
    """Sample ``flowtrap run`` with py-spy while it is sent more than it holds."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return Profile(error="py-spy is not installed (pip install py-spy)")
    collector = Flowtrap("1")
    with tempfile.TemporaryDirectory(prefix="flowtrap-bench-") as name:
        folder = Path(name)
        port = collector.start(folder)
        plan = Plan(port, rate, seconds + 2.0, pool, cpu=0)
        write_plan(plan, folder / "plan.pickle")
        sender = subprocess.Popen(
            [sys.executable, "-m", "bench.sender", str(folder / "plan.pickle")],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        time.sleep(1.0)
        raw = out / "py-spy-flowtrap-run.txt"
        command = [spy, "record", "--pid", str(collector.pid)]
        command += ["-d", str(int(seconds)), "-r", "500", "--nonblocking"]
        command += ["--format", "raw", "-o", str(raw)]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
        )
        sender.wait(timeout=seconds * 3 + 30)
        collector.stop()
    if result.returncode != 0 or not raw.exists():
        return Profile(error=f"py-spy failed: {result.stderr.strip()[-300:]}")
    return parse_collapsed(raw.read_text())


def in_process(stream: Stream, seconds: float, out: Path) -> Path | None:
    """Record one in-process decode + detect run with pyinstrument; return the file."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        return None
    contenders = Contenders(stream, Stream(stream.version, []))
    profiler = Profiler(interval=0.0005)
    profiler.start()
    _rate(contenders.flowtrap, stream, seconds)
    profiler.stop()
    path = out / f"pyinstrument-decode-detect-v{stream.version}.txt"
    path.write_text(profiler.output_text(unicode=False, color=False))
    return path


def key_functions() -> tuple[str, ...]:
    """Return the function names the report shows inclusive time for."""
    return _KEY_FUNCTIONS
