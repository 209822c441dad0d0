"""Configuration: file, FLOWTRAP_* variables and flags, validated before start."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest

from collector.cli import main
from schemas.config import Config, parse_target
from tests.conftest import ROOT


def check(
    capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, dict[str, object], str]:
    """Run ``flowtrap check-config``; return its code, config and stderr."""
    code = main(["check-config", *args])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else {}), err


def test_flags_override_the_environment_which_overrides_the_file(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Each layer replaces the one below it, setting by setting."""
    config = tmp_path / "flowtrap.toml"
    config.write_text(
        "[detection]\nwindow_seconds = 30\nlateness_seconds = 5\n"
        "[output.file]\nkeep = 2\n"
    )
    monkeypatch.setenv("FLOWTRAP_DETECTION__WINDOW_SECONDS", "40")
    monkeypatch.setenv("FLOWTRAP_OUTPUT__FILE__KEEP", "3")
    monkeypatch.setenv("FLOWTRAP_INTERNAL_NETWORKS", "10.0.0.0/8, 192.168.0.0/16")

    _, from_env, _ = check(capsys, "--config", str(config))
    _, from_flag, _ = check(capsys, "--config", str(config), "--window", "50")

    assert from_env["detection"]["window_seconds"] == 40
    assert from_env["detection"]["lateness_seconds"] == 5
    assert from_env["output"]["file"]["keep"] == 3
    assert from_env["internal_networks"] == ["10.0.0.0/8", "192.168.0.0/16"]
    assert from_flag["detection"]["window_seconds"] == 50


def test_the_config_file_may_be_named_in_the_environment(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """FLOWTRAP_CONFIG names the file when --config does not."""
    config = tmp_path / "flowtrap.toml"
    config.write_text('events = ["syslog+tcp://127.0.0.1:6601", "-"]\n')
    monkeypatch.setenv("FLOWTRAP_CONFIG", str(config))
    code, loaded, _ = check(capsys)
    assert code == 0
    assert loaded["events"] == ["syslog+tcp://127.0.0.1:6601", "-"]


def test_check_config_reports_every_problem_with_its_path_and_source(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Problems from the file, the environment and flags are listed together."""
    config = tmp_path / "flowtrap.toml"
    config.write_text(
        "[detection]\nwindow_seconds = -1\n"
        "[detection.detectors.cups_browsed_internal_external]\nseverity = 500\n"
        "[output.file]\nkepe = 3\n"
    )
    monkeypatch.setenv("FLOWTRAP_OUTPUT__QUEUE_SIZE", "0")
    code, _, err = check(
        capsys,
        "--config",
        str(config),
        "--events",
        "-",
        "--events",
        "http://siem.example:80",
        "--detectors",
        "cups_browsed_internal_external,nope",
    )

    assert code == 2
    problems = dict(
        re.match(r"\s+(\S+): (.*)", line).groups()  # type: ignore[union-attr]
        for line in err.splitlines()
        if line.startswith("  ")
    )
    assert set(problems) == {
        "events[1]",
        "detection.window_seconds",
        "output.file.kepe",
        "output.queue_size",
        "detection.enabled",
    }
    assert problems["events[1]"].endswith("(from --events)")
    assert problems["detection.window_seconds"].endswith(f"(from {config})")
    assert problems["output.queue_size"].endswith("(from FLOWTRAP_OUTPUT__QUEUE_SIZE)")
    assert "unknown detector nope" in problems["detection.enabled"]


def test_detector_settings_are_checked_with_their_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A detector's own settings table is validated by that detector."""
    config = tmp_path / "flowtrap.toml"
    config.write_text(
        "[detection.detectors.cups_browsed_internal_external]\nseverity = 500\n"
    )
    code, _, err = check(capsys, "--config", str(config))
    assert code == 2
    assert "detection.detectors.cups_browsed_internal_external.severity" in err


def test_unknown_flowtrap_variables_are_warned_about(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A misspelt variable is named, since it silently sets nothing."""
    monkeypatch.setenv("FLOWTRAP_WINDOW_SECONDS", "30")
    code, _, err = check(capsys)
    assert code == 0
    assert "FLOWTRAP_WINDOW_SECONDS" in err


def test_the_readme_example_is_a_valid_configuration(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The full example in the README passes check-config as written."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Configuration") :]
    example = re.search(r"```toml\n(.*?)```", section, re.S)
    assert example is not None
    config = tmp_path / "flowtrap.toml"
    # The example's TLS files and event directory are the operator's; here
    # they are stand-ins in the test's own directory.
    text = example.group(1)
    for path in sorted(set(re.findall(r'"(/etc/flowtrap/[^"]+)"', text))):
        stand_in = tmp_path / Path(path).name
        stand_in.write_text("stand-in\n")
        text = text.replace(path, str(stand_in))
    config.write_text(text)
    code, loaded, err = check(capsys, "--config", str(config))
    assert code == 0, err
    assert len(loaded["events"]) >= 3


def test_a_bad_configuration_stops_before_any_socket_or_file_opens(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`run` with a bad setting exits 2 and leaves the port and directory alone."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    events = tmp_path / "out" / "events.jsonl"
    code = main(
        [
            "run",
            "--listen",
            f"127.0.0.1:{port}",
            "--events",
            str(events),
            "--window",
            "0",
        ]
    )
    assert code == 2
    assert "detection.window_seconds" in capsys.readouterr().err
    assert not events.parent.exists()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", port))


@pytest.mark.parametrize(
    ("text", "kind", "where"),
    [
        ("-", "stdout", ""),
        ("events.jsonl", "file", "events.jsonl"),
        ("/var/log/flowtrap/events.jsonl", "file", "/var/log/flowtrap/events.jsonl"),
        ("file:///var/log/e.jsonl", "file", "/var/log/e.jsonl"),
        ("syslog+udp://127.0.0.1", "syslog", "udp 127.0.0.1:514"),
        ("syslog+tcp://siem.example.org:1514", "syslog", "tcp siem.example.org:1514"),
        ("syslog+tls://127.0.0.1", "syslog", "tls 127.0.0.1:6514"),
        ("syslog+tls://[::1]:6514", "syslog", "tls ::1:6514"),
        (
            "nats://127.0.0.1:4222/flowtrap.events",
            "nats",
            "127.0.0.1:4222 flowtrap.events",
        ),
        ("nats://[::1]:4222/events", "nats", "::1:4222 events"),
    ],
)
def test_event_targets_parse(text: str, kind: str, where: str) -> None:
    """Each accepted --events form names its kind and destination."""
    target = parse_target(text)
    assert target.kind == kind
    if kind == "file":
        assert target.path == where
    elif kind == "syslog":
        assert f"{target.transport} {target.host}:{target.port}" == where
    elif kind == "nats":
        assert f"{target.host}:{target.port} {target.subject}" == where


@pytest.mark.parametrize(
    "text",
    [
        "http://127.0.0.1:80",
        "syslog+sctp://127.0.0.1",
        "syslog+udp://",
        "syslog+tcp://127.0.0.1:0",
        "syslog+tcp://127.0.0.1:70000",
        "syslog+tcp://127.0.0.1/path",
        "syslog+udp://bad_host!",
        "nats://127.0.0.1:4222",
        "nats://127.0.0.1/flowtrap.events",
        "nats://127.0.0.1:4222/flowtrap.*",
        "nats://127.0.0.1:4222/flowtrap..events",
        "nats://127.0.0.1:4222/flowtrap.events?x=1",
        "file://remote/path",
        "logs/",
    ],
)
def test_bad_event_targets_are_refused(text: str) -> None:
    """Anything else is an error that says what is accepted."""
    with pytest.raises(ValueError, match=r"."):
        parse_target(text)


def test_settings_with_one_meaning_are_normalised() -> None:
    """A bare metrics port is on loopback; one events string is a list of one."""
    config = Config.model_validate({"metrics": "9464", "events": "events.jsonl"})
    assert config.metrics == "127.0.0.1:9464"
    assert config.events == ["events.jsonl"]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"events": ["-", "-"]}, "listed twice"),
        ({"events": []}, "at least 1"),
        ({"allowed_exporters": []}, "at least 1"),
        ({"output": {"syslog": {"key_file": "/etc/hostname"}}}, "go together"),
        ({"output": {"syslog": {"ca_file": "/nonexistent.pem"}}}, "file"),
        ({"log_format": "xml"}, "text"),
    ],
)
def test_inconsistent_settings_are_refused(data: dict, problem: str) -> None:
    """Settings that cannot work together fail validation."""
    with pytest.raises(ValueError, match=problem):
        Config.model_validate(data)


def test_run_stops_with_a_clear_message_when_an_output_cannot_open(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """An event file that cannot be created stops start-up, naming it."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    target = blocker / "events.jsonl"
    code = main(["run", "--listen", "127.0.0.1:0", "--events", str(target)])
    assert code == 2
    assert f"cannot open event output {target}" in capsys.readouterr().err
