"""The sink interface: where the pipeline hands finished events.

``collector.outputs.Outputs`` is the sink the CLI builds: it fans each event out
to standard output, event files and syslog receivers.
"""

from __future__ import annotations

from typing import Protocol

from schemas.event import Document


class Sink(Protocol):
    """Receives finished events; never sees flow records."""

    def write(self, event: Document) -> None:
        """Deliver one event document; must not block decoding."""
        ...

    def close(self) -> None:
        """Deliver what is held and release everything (shutdown)."""
        ...
