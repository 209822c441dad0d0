"""The deployment files: the systemd unit and the Docker image's user."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

UNIT = ROOT / "deploy" / "flowtrap.service"


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """The unit parses, and every option in it is one systemd knows."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    flowtrap = Path(sys.executable).with_name("flowtrap")
    unit = tmp_path / "flowtrap.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/flowtrap", str(flowtrap)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "flowtrap.service" not in result.stderr, result.stderr


def test_systemd_unit_runs_unprivileged_and_hardened() -> None:
    """Its own user, no capabilities, a read-only system, a syscall filter."""
    options = dict(
        line.split("=", 1)
        for line in UNIT.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert options["User"] == "flowtrap"
    assert options["CapabilityBoundingSet"] == ""
    assert options["NoNewPrivileges"] == "yes"
    assert options["ProtectSystem"] == "strict"
    assert options["ExecReload"].endswith("-HUP $MAINPID")
    assert "SystemCallFilter" in options


def test_docker_image_runs_as_a_non_root_user() -> None:
    """The last USER of the image is not root."""
    users = re.findall(r"^USER\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert users
    assert users[-1] not in ("root", "0")
