"""Sinks: where finished events go, one JSON object per line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import BinaryIO, Protocol

import orjson

from schemas.event import Event


def encode(event: Event) -> bytes:
    """Serialise an event as one JSON line, ``@timestamp`` first."""
    document = event.model_dump(mode="json", by_alias=True)
    return orjson.dumps(document) + b"\n"


class Sink(Protocol):
    """Receives finished events; never sees flow records."""

    def write(self, event: Event) -> None:
        """Deliver one event."""
        ...

    def close(self) -> None:
        """Flush and release what the sink holds."""
        ...


class JsonLinesSink:
    """Writes each event as one complete line with one ``write()``, flushed.

    A SIEM agent tailing the file never sees half a line: the line is built in
    memory first, and the file is opened in append mode.
    """

    def __init__(self, target: str) -> None:
        """Remember the target; ``-`` is standard output."""
        self.target = target
        self._handle: BinaryIO | None = None
        self.written = 0

    def open(self) -> BinaryIO:
        """Open the target (a file is created 0640 and appended to)."""
        if self.target == "-":
            self._handle = sys.stdout.buffer
        else:
            path = Path(self.target)
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._handle = os.fdopen(descriptor, "ab", buffering=0)
        return self._handle

    def write(self, event: Event) -> None:
        """Write one event line and flush it."""
        handle = self._handle or self.open()
        handle.write(encode(event))
        handle.flush()
        self.written += 1

    def close(self) -> None:
        """Flush; close the file unless it is standard output."""
        if self._handle is None:
            return
        self._handle.flush()
        if self.target != "-":
            self._handle.close()
        self._handle = None
