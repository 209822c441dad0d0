"""The docker-compose lab: the file validates and matches the live lab.

Docker's engine is not needed: ``docker-compose config -q`` (Debian's
docker-compose) validates the file.  Without docker-compose this skips, except
in CI, where FLOWTRAP_REQUIRE_EXPORTERS turns that skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tools.lab import REPO, TRAFFIC
from tools.lab_exporters import PMACCTD_CONFIG
from tools.lab_netns import (
    COLLECTOR,
    OUTSIDE,
    ROUTER_INSIDE,
    ROUTER_OUTSIDE,
    WORKSTATION,
)

COMPOSE = REPO / "docker-compose.yml"


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    """Run docker-compose on the repo's file; skip or fail if it is missing."""
    binary = shutil.which("docker-compose")
    if binary is None:
        message = "docker-compose is not installed (apt-get install docker-compose)"
        if os.environ.get("FLOWTRAP_REQUIRE_EXPORTERS"):
            pytest.fail(f"{message}; FLOWTRAP_REQUIRE_EXPORTERS forbids skipping")
        pytest.skip(message)
    return subprocess.run(
        [binary, "--file", str(COMPOSE), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )


def test_compose_file_validates() -> None:
    """docker-compose accepts the file as it stands."""
    done = compose("config", "-q")
    assert done.returncode == 0, done.stderr


def test_compose_lab_has_every_role_of_the_live_lab() -> None:
    """Collector, router, outside host, workstation, exporter and the event tail."""
    done = compose("config", "--services")
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == {
        "collector",
        "router",
        "outside",
        "workstation",
        "exporter",
        "events",
    }


def test_compose_lab_uses_the_live_lab_addresses_and_files() -> None:
    """Both labs share addresses, the traffic script and the two configs."""
    text = COMPOSE.read_text()
    for address in (COLLECTOR, WORKSTATION, ROUTER_INSIDE, ROUTER_OUTSIDE, OUTSIDE):
        assert f"ipv4_address: {address}" in text
    assert "./lab/flowtrap.toml:" in text
    assert f"/lab/{PMACCTD_CONFIG.name}" in text
    assert f"/lab/{TRAFFIC.name}" in text
    assert f"nfprobe_receiver: {COLLECTOR}:4739" in PMACCTD_CONFIG.read_text()
