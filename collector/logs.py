"""Logging set-up: short lower-case messages with their values as key=value."""

from __future__ import annotations

import logging
import sys

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class KeyValueFormatter(logging.Formatter):
    """Formats a record as ``time level logger: message key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        """Append the record's extra fields to the message."""
        line = super().format(record)
        extras = {
            key: value for key, value in vars(record).items() if key not in _STANDARD
        }
        if extras:
            line += " " + " ".join(f"{key}={value}" for key, value in extras.items())
        return line


def setup_logging(level: int = logging.INFO) -> None:
    """Send logs to stderr; called once at start-up, never at import."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        KeyValueFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
