"""The docker-compose lab: the file validates and matches the live lab.

Docker's engine is not needed: ``docker-compose config -q`` (Debian's
docker-compose) validates the file.  Without docker-compose this skips, except
in CI, where FLOWTRAP_REQUIRE_EXPORTERS turns that skip into a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tools.lab import REPO, TRAFFIC
from tools.lab_exporters import EXPORT_PORT, EXPORTER_SCRIPT, PMACCTD_CONFIG
from tools.lab_netns import (
    COLLECTOR,
    OUTSIDE,
    ROUTER_INSIDE,
    ROUTER_OUTSIDE,
    WORKSTATION,
)

COMPOSE = REPO / "docker-compose.yml"


def compose(
    *args: str, exporter: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run docker-compose on the repo's file; skip or fail if it is missing.

    ``exporter`` sets LAB_EXPORTER, as ``LAB_EXPORTER=pmacctd docker compose up``.
    """
    binary = shutil.which("docker-compose")
    if binary is None:
        message = "docker-compose is not installed (apt-get install docker-compose)"
        if os.environ.get("FLOWTRAP_REQUIRE_EXPORTERS"):
            pytest.fail(f"{message}; FLOWTRAP_REQUIRE_EXPORTERS forbids skipping")
        pytest.skip(message)
    env = {k: v for k, v in os.environ.items() if k != "LAB_EXPORTER"}
    if exporter is not None:
        env["LAB_EXPORTER"] = exporter
    return subprocess.run(
        [binary, "--file", str(COMPOSE), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_compose_file_validates() -> None:
    """docker-compose accepts the file as it stands."""
    done = compose("config", "-q")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("chosen", "expected"),
    [(None, "softflowd"), ("pmacctd", "pmacctd")],
    ids=["default", "pmacctd"],
)
def test_compose_exporter_is_softflowd_unless_lab_exporter_says(
    chosen: str | None, expected: str
) -> None:
    """The exporter service runs lab/exporter.sh for softflowd, or for pmacctd."""
    done = compose("config", exporter=chosen)
    assert done.returncode == 0, done.stderr
    assert f"LAB_EXPORTER: {expected}" in done.stdout
    assert f"/lab/{EXPORTER_SCRIPT.name}" in done.stdout


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
    assert f"/lab/{EXPORTER_SCRIPT.name}" in text
    assert f"/lab/{TRAFFIC.name}" in text
    assert f"nfprobe_receiver: {COLLECTOR}:{EXPORT_PORT}" in PMACCTD_CONFIG.read_text()


def test_lab_image_holds_both_exporters_and_every_file_they_read() -> None:
    """lab/Dockerfile installs softflowd and pmacct and copies their files."""
    dockerfile = (REPO / "lab" / "Dockerfile").read_text()
    assert "softflowd" in dockerfile
    assert "pmacct" in dockerfile
    copied = next(line for line in dockerfile.splitlines() if line.startswith("COPY"))
    for path in (TRAFFIC, EXPORTER_SCRIPT, PMACCTD_CONFIG):
        assert path.name in copied.split()


def test_exporter_script_exports_to_the_collector_with_either_exporter() -> None:
    """softflowd's options and pmacctd's config: same collector, same timeouts."""
    script = EXPORTER_SCRIPT.read_text()
    assert f"-n {COLLECTOR}:{EXPORT_PORT}" in script
    assert f"not (udp and port {EXPORT_PORT})" in script
    assert f"{PMACCTD_CONFIG.name}" in script
    config = PMACCTD_CONFIG.read_text()
    assert f"pcap_filter: not (udp and port {EXPORT_PORT})" in config
    timeouts = re.search(r"^nfprobe_timeouts: (\S+)$", config, re.MULTILINE)
    assert timeouts is not None
    assert re.findall(r"-t (\S+)", script) == timeouts[1].split(":")
