"""The public captures as the tests read them: the manifest and its datagrams."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from collector.capture import read_capture
from tests.conftest import CAPTURES

# Raw export-packet files carry no addresses; they all come from this exporter.
RAW_EXPORTER = "192.0.2.1"
RAW_PORT = 9995
CAPTURE_SUFFIXES = (".pcap", ".pcapng")


@cache
def manifest() -> dict[str, Any]:
    """Return the capture manifest, parsed once."""
    manifest: dict[str, Any] = json.loads((CAPTURES / "manifest.json").read_text())
    return manifest


def _group_names() -> list[str]:
    """Return every replay group name, or a placeholder that skips without data."""
    if not (CAPTURES / "manifest.json").is_file():
        return ["no-corpus"]
    return list(manifest()["replay_groups"])


GROUPS = _group_names()


def datagrams(path: Path) -> Iterator[tuple[str, int, float, bytes]]:
    """Yield (exporter, port, received, data) for every export packet of a file.

    pcap and pcapng files go through ``read_capture``; any other file is one raw
    export packet from a fixed exporter.
    """
    if path.suffix in CAPTURE_SUFFIXES:
        for datagram in read_capture(path):
            yield datagram.exporter, datagram.port, datagram.received, datagram.data
    else:
        yield RAW_EXPORTER, RAW_PORT, 0.0, path.read_bytes()
