"""Logging set-up: key=value text for people, JSON lines for machines.

Warnings are rate limited per message, exporter, reason and output: a few get
through in each interval, and the first one after a quiet spell says how many
were held back. Counters, not logs, carry per-packet detail.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

# At most this many warnings per key in each interval (as Akvorado does).
BURST = 3
INTERVAL_SECONDS = 30.0
# Keys remembered by the limiter; past this it starts over, never grows.
MAX_KEYS = 10_000
# Libraries that log at INFO for every flow; only their warnings are kept.
CHATTY_LIBRARIES = ("communityid",)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """Return the fields a record carries beyond the standard ones."""
    return {key: value for key, value in vars(record).items() if key not in _STANDARD}


class KeyValueFormatter(logging.Formatter):
    """Formats a record as ``time level logger: message key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        """Append the record's extra fields to the message."""
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{key}={value}" for key, value in extras.items())
        return line


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, message, fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Serialise the record and its extra fields."""
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            document.setdefault(key, value)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(document, default=str).decode()


class RateLimit(logging.Filter):
    """Lets through a few warnings per key and interval; counts the rest."""

    def __init__(self, burst: int = BURST, interval: float = INTERVAL_SECONDS):
        """Start with no history."""
        super().__init__()
        self.burst = burst
        self.interval = interval
        self._windows: dict[tuple[object, ...], list[float]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        """Return False for a warning over its key's budget."""
        if record.levelno < logging.WARNING:
            return True
        key = (
            record.name,
            record.msg,
            getattr(record, "exporter", None),
            getattr(record, "reason", None),
            getattr(record, "output", None),
        )
        now = time.monotonic()
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window[0] >= self.interval:
                suppressed = int(window[2]) if window is not None else 0
                if len(self._windows) >= MAX_KEYS:
                    self._windows.clear()
                self._windows[key] = [now, 1, 0]
                if suppressed:
                    record.suppressed = suppressed
                return True
            if window[1] < self.burst:
                window[1] += 1
                return True
            window[2] += 1
            return False


def setup_logging(
    level: int | str = logging.INFO, style: Literal["text", "json"] = "text"
) -> None:
    """Send logs to stderr; called at start-up (again once the config is read)."""
    handler = logging.StreamHandler(sys.stderr)
    if style == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            KeyValueFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    handler.addFilter(RateLimit())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
