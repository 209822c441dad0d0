"""The command line: replay of the bundled exports, schemas, config errors."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import struct
import sys
import termios
from pathlib import Path

import jsonschema
import orjson
import pytest

from collector import cli
from collector.cli import main
from schemas.event import Event
from tests.conftest import EXPORTS, FIXTURES

EGRESS = {("10.1.0.5", "203.0.113.10"), ("fd00:1::5", "2001:db8:feed::10")}


def replay(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[list[dict], dict]:
    """Run ``flowtrap replay`` and return its events and summary."""
    assert main(["replay", *args]) == 0
    out, err = capsys.readouterr()
    events = [orjson.loads(line) for line in out.splitlines() if line]
    summary = json.loads(err[err.index("{") :])
    return events, summary


@pytest.mark.parametrize(
    "capture",
    sorted(p.name for p in EXPORTS.glob("*.pcap") if "callback" not in p.name),
)
def test_replay_of_bundled_exports_raises_egress_events_only(
    capsys: pytest.CaptureFixture[str], capture: str
) -> None:
    """Each exporter's capture gives events for the egress pairs and nothing else."""
    events, summary = replay(capsys, str(EXPORTS / capture))
    pairs = {(e["source"]["ip"], e["destination"]["ip"]) for e in events}
    expected = {p for p in EGRESS if "v5" not in capture or ":" not in p[0]}
    assert pairs == expected
    assert summary["errors"] == {}
    assert summary["flow_records"] >= 11


def test_replay_is_deterministic(capsys: pytest.CaptureFixture[str]) -> None:
    """The same capture gives byte-identical events every time."""
    capture = str(EXPORTS / "softflowd-v9.pcap")
    assert main(["replay", capture]) == 0
    first = capsys.readouterr().out
    assert main(["replay", capture]) == 0
    assert capsys.readouterr().out == first


def test_replay_events_validate_against_published_schema(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every event matches `flowtrap schema event`."""
    assert main(["schema", "event"]) == 0
    schema = json.loads(capsys.readouterr().out)
    events, _ = replay(capsys, *(str(p) for p in sorted(EXPORTS.glob("*.pcap"))))
    assert events
    for event in events:
        jsonschema.validate(event, schema)
        assert next(iter(event)) == "@timestamp"
        Event.model_validate(event)


def test_replay_port_filter_skips_other_ports(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With --port, datagrams to other ports are skipped and counted."""
    events, summary = replay(
        capsys, str(EXPORTS / "softflowd-v9.pcap"), "--port", "9999"
    )
    assert events == []
    assert summary["frames_skipped"] == {"other_port": 1}


def test_replay_of_a_lab_packet_capture_counts_non_export_udp(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """UDP that is not an export packet (DNS, CUPS) is counted by reason."""
    events, summary = replay(capsys, str(FIXTURES / "lab.pcap"))
    assert events == []
    assert summary["errors"]


@pytest.mark.parametrize("name", ["event", "flow", "config"])
def test_schema_command_prints_json_schema(
    capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """Each schema is valid JSON Schema."""
    assert main(["schema", name]) == 0
    jsonschema.Draft202012Validator.check_schema(json.loads(capsys.readouterr().out))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--detectors", "nope"], "unknown detector nope"),
        (["--internal-networks", "10.0.0.0/33"], "internal_networks"),
        (["--window", "0"], "detection.window_seconds"),
    ],
)
def test_bad_options_stop_with_a_clear_message(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    """A bad option exits 2 and names what to fix."""
    code = main(["replay", str(EXPORTS / "softflowd-v9.pcap"), *args])
    assert code == 2
    assert message in capsys.readouterr().err


def test_config_file_is_read_and_flags_override_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A TOML file sets internal networks; a flag replaces them."""
    config = tmp_path / "flowtrap.toml"
    config.write_text('internal_networks = ["203.0.113.0/24"]\n')
    events, _ = replay(
        capsys, str(EXPORTS / "softflowd-v5.pcap"), "--config", str(config)
    )
    assert events == []
    events, _ = replay(
        capsys,
        str(EXPORTS / "softflowd-v5.pcap"),
        "--config",
        str(config),
        "--internal-networks",
        "10.0.0.0/8",
    )
    assert len(events) == 1


def test_unreadable_capture_says_what_to_do(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A file that is not a capture gives a one-line error, not a traceback."""
    bogus = tmp_path / "not.pcap"
    bogus.write_bytes(b"hello world, not a pcap")
    assert main(["replay", str(bogus)]) == 2
    assert "not a pcap or pcapng file" in capsys.readouterr().err


def test_replay_on_a_terminal_shows_a_progress_bar(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With stderr on a terminal, replay draws a bar over the capture's bytes."""
    master, slave = pty.openpty()
    # A terminal of 24 rows and 80 columns (a fresh pty has none, and tqdm
    # draws no bar below the last row).
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    terminal = os.fdopen(slave, "w")
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(cli, "PROGRESS_DELAY", 0.0)
    events = tmp_path / "events.jsonl"
    try:
        code = main(
            ["replay", str(EXPORTS / "softflowd-v9.pcap"), "--events", str(events)]
        )
        terminal.flush()
        os.set_blocking(master, False)
        shown = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(master, 65536):
                shown += chunk
    finally:
        terminal.close()
        os.close(master)
    assert code == 0
    assert b"\rreplay:" in shown
    size = (EXPORTS / "softflowd-v9.pcap").stat().st_size
    assert f"/{size} [".encode() in shown


def test_replay_without_a_terminal_draws_no_bar(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Piped or captured stderr gets the summary only."""
    monkeypatch.setattr(cli, "PROGRESS_DELAY", 0.0)
    _, summary = replay(capsys, str(EXPORTS / "softflowd-v9.pcap"))
    assert summary["export_packets"] == 1
    assert cli.progress_bar([EXPORTS / "softflowd-v9.pcap"]) is None


def test_events_naming_a_directory_stop_with_a_clear_message(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--events DIR is refused before anything is written, not written beside it."""
    code = main(
        ["replay", str(EXPORTS / "softflowd-v9.pcap"), "--events", str(tmp_path)]
    )
    assert code == 2
    assert "is a directory" in capsys.readouterr().err
    assert not list(tmp_path.parent.glob(f"{tmp_path.name}-*"))


def test_replay_summary_on_stderr_is_json_alone(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without --log-level, replay logs nothing at INFO, so stderr parses as JSON."""
    assert main(["replay", str(EXPORTS / "softflowd-v9.pcap")]) == 0
    assert json.loads(capsys.readouterr().err)["flow_records"] == 12
