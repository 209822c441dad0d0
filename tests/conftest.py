"""Shared test set-up: where the public captures live, and exporter requirements."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
EXPORTS = FIXTURES / "exports"
# The exporters' recorded exports, one per exporter address (127.0.0.2 on) in
# the tests that play several exporters.
EXPORT_CAPTURES = (
    "softflowd-v5.pcap",
    "softflowd-v9.pcap",
    "softflowd-v10.pcap",
    "softflowd-v5-callback.pcap",
    "softflowd-v9-callback.pcap",
    "softflowd-v10-callback.pcap",
    "pmacctd-v9.pcap",
    "pmacctd-v10.pcap",
)
SHARED = ROOT.parent / "shared"
CAPTURES = SHARED / "captures"
CUPS_PCAPS = SHARED / "cups-pcaps-initconf"


def require_tool(name: str) -> str:
    """Return a tool's path; skip without it, or fail when CI requires it."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not installed (apt-get install softflowd pmacct tshark)"
    if os.environ.get("FLOWTRAP_REQUIRE_EXPORTERS"):
        pytest.fail(f"{message}; FLOWTRAP_REQUIRE_EXPORTERS forbids skipping")
    pytest.skip(message)


def require_corpus() -> Path:
    """Return ../shared/captures; skip without it, or fail when CI requires it."""
    if (CAPTURES / "manifest.json").is_file():
        return CAPTURES
    message = f"public captures not found at {CAPTURES}"
    if os.environ.get("FLOWTRAP_REQUIRE_CORPUS"):
        pytest.fail(f"{message}; FLOWTRAP_REQUIRE_CORPUS forbids skipping")
    pytest.skip(message)
