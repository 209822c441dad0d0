"""Event outputs: standard output, rotating JSON-lines files, syslog and NATS.

The pipeline hands each finished event to ``Outputs``, which renders it once
and queues it on every output; each output delivers from its own thread.
"""

from __future__ import annotations

import logging
from pathlib import Path

from collector.outputs.base import QueuedOutput, QueueSettings
from collector.outputs.files import (
    FileSettings,
    RotatingFileOutput,
    StreamOutput,
    is_stream,
)
from collector.outputs.formats import FORMATS, EventFormat
from collector.outputs.message import Message
from collector.outputs.nats import NatsOutput
from collector.outputs.syslog import SyslogOutput, SyslogSettings
from schemas.config import Config, Target
from schemas.event import Document

log = logging.getLogger(__name__)


class OutputError(Exception):
    """An output that cannot be opened at start; the message names it."""


class Outputs:
    """Every configured output, behind the pipeline's Sink interface."""

    def __init__(self, outputs: list[QueuedOutput], event_format: EventFormat) -> None:
        """Keep the outputs; no I/O until start()."""
        self.outputs = outputs
        self.format = event_format
        self._started = False

    def start(self) -> None:
        """Open every output (a file that cannot be created fails here)."""
        started: list[QueuedOutput] = []
        for output in self.outputs:
            try:
                output.start()
            except OSError as error:
                for running in started:
                    running.stop()
                    running.join()
                reason = error.strerror or str(error)
                where = f" ({error.filename})" if error.filename else ""
                raise OutputError(
                    f"cannot open event output {output.name}: {reason}{where}"
                ) from error
            started.append(output)
        self._started = True

    def write(self, event: Document) -> None:
        """Render the event once and queue it on every output; never blocks."""
        message = Message.of(event, self.format)
        for output in self.outputs:
            output.submit(message)

    def room(self) -> int | None:
        """Return what the fullest working output still takes (None: no limit)."""
        rooms = [r for r in (output.room() for output in self.outputs) if r is not None]
        return min(rooms) if rooms else None

    def reopen(self) -> None:
        """Begin new event files (SIGHUP)."""
        for output in self.outputs:
            if isinstance(output, RotatingFileOutput):
                output.reopen()

    def close(self) -> None:
        """Drain every output (together, each within its drain time) and stop."""
        if not self._started:
            return
        self._started = False
        for output in self.outputs:
            output.stop()
        for output in self.outputs:
            output.join()
        dropped = {o.name: o.dropped for o in self.outputs if o.dropped}
        if dropped:
            log.warning("events dropped by outputs", extra={"dropped": dropped})


def build(config: Config) -> Outputs:
    """Build the outputs that ``events`` names, from their settings."""
    section = config.output
    queue = QueueSettings(
        size=section.queue_size,
        retry_initial=section.retry_initial_seconds,
        retry_max=section.retry_max_seconds,
        connect_timeout=section.connect_timeout_seconds,
        drain=section.drain_seconds,
    )
    files = FileSettings(**section.file.model_dump())
    syslog = SyslogSettings(**section.syslog.model_dump())
    outputs = [_one(target, queue, files, syslog) for target in config.targets()]
    return Outputs(outputs, FORMATS[config.event_format])


def _one(
    target: Target, queue: QueueSettings, files: FileSettings, syslog: SyslogSettings
) -> QueuedOutput:
    """Build the output for one target."""
    cap = files.max_line_bytes
    if target.kind == "stdout":
        return StreamOutput(target.text, queue, cap)
    if target.kind == "syslog":
        return SyslogOutput(target, queue, syslog)
    if target.kind == "nats":
        return NatsOutput(target, queue, cap)
    path = Path(target.path)
    if is_stream(path):
        return StreamOutput(target.text, queue, cap, target.path)
    return RotatingFileOutput(target.text, path, queue, files)


__all__ = ["OutputError", "Outputs", "QueuedOutput", "build"]
