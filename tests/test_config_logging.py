"""Log settings: text or JSON lines, and warnings limited per exporter and reason."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.logs import RateLimit, setup_logging
from collector.reporter import InputReporter
from collector.stats import Stats
from tests.conftest import EXPORTS

log = logging.getLogger("flowtrap.test")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Put the root logger back as pytest had it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_logs_are_one_object_per_line_with_their_fields(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--log-format json writes time, level, logger, message and extra fields."""
    setup_logging("info", "json")
    log.info("template learned", extra={"exporter": "127.0.0.2", "template": 256})
    (line,) = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert record["level"] == "info"
    assert record["logger"] == "flowtrap.test"
    assert record["message"] == "template learned"
    assert record["exporter"] == "127.0.0.2"
    assert record["template"] == 256
    assert record["time"].endswith("+00:00")


def test_replay_logs_in_json_when_asked(tmp_path: Path) -> None:
    """A real process logs only JSON lines before its replay summary."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "collector",
            "replay",
            str(EXPORTS / "softflowd-v9.pcap"),
            "--log-format",
            "json",
            "--log-level",
            "info",
            "--events",
            f"{tmp_path}/events.jsonl",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    head = result.stderr[: result.stderr.index("\n{\n")]
    records = [json.loads(line) for line in head.splitlines()]
    assert any(r["message"] == "event file opened" for r in records)


def test_warnings_are_limited_per_exporter_and_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A few warnings per key get through; others keep their own budget."""
    setup_logging("info", "text")
    for _ in range(10):
        log.warning("bad input", extra={"exporter": "127.0.0.2", "reason": "short"})
    log.warning("bad input", extra={"exporter": "127.0.0.3", "reason": "short"})
    log.warning("bad input", extra={"exporter": "127.0.0.2", "reason": "long"})
    lines = capsys.readouterr().err.splitlines()
    assert sum("exporter=127.0.0.2 reason=short" in line for line in lines) == 3
    assert sum("exporter=127.0.0.3" in line for line in lines) == 1
    assert sum("reason=long" in line for line in lines) == 1


def test_the_first_warning_after_a_quiet_spell_says_how_many_were_held_back() -> None:
    """When an interval ends, the next warning carries the suppressed count."""
    record = logging.makeLogRecord(
        {"levelno": logging.WARNING, "msg": "bad input", "exporter": "a"}
    )
    limiter = RateLimit(burst=1, interval=3600)
    assert limiter.filter(record)
    assert not limiter.filter(record)
    assert not limiter.filter(record)
    limiter.interval = 0.0
    assert limiter.filter(record)
    assert record.suppressed == 2


def test_decode_errors_become_warnings_once_per_tick_not_per_packet(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The reporter turns new error counts into one warning per key."""
    stats = Stats()
    reporter = InputReporter(stats)
    for _ in range(500):
        stats.error("127.0.0.2", "truncated_header")
    with caplog.at_level(logging.WARNING):
        reporter.report()
        reporter.report()
    (record,) = caplog.records
    assert record.exporter == "127.0.0.2"  # type: ignore[attr-defined]
    assert record.reason == "truncated_header"  # type: ignore[attr-defined]
    assert record.count == 500  # type: ignore[attr-defined]
