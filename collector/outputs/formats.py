"""Event formats: how an event becomes the JSON document that outputs write.

Each format names where its flow sample sits, so that an output can trim an
oversized document the same way whatever the format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from schemas.event import Document, Event

# The tag an event carries when its flow sample was cut to fit a line.
TRIMMED_TAG = "sample_trimmed"


@dataclass(frozen=True, slots=True)
class EventFormat:
    """One way of writing events."""

    name: str
    render: Callable[[Document], Document]
    # Keys leading to the list of sample flow records inside the document.
    sample: tuple[str, ...]
    # Marks a document whose sample lost ``removed`` flow records.
    mark_trimmed: Callable[[Document, int], None]


def ecs_document(event: Document) -> Document:
    """Render the ECS event (schema v1): the pipeline builds it in this form."""
    return event


def _tag_trimmed(document: Document, removed: int) -> None:
    """Add the ``sample_trimmed`` tag (the schema has no other place for it)."""
    tags = list(document.get("tags", []))
    if TRIMMED_TAG not in tags:
        tags.append(TRIMMED_TAG)
    document["tags"] = tags


def ocsf_document(event: Document) -> Document:
    """Render the OCSF 1.5 Detection Finding (class 2004)."""
    # Imported on first use: only collectors that write OCSF load its models.
    from schemas.ocsf import to_ocsf

    return to_ocsf(Event.model_validate(event))


def _note_trimmed(document: Document, removed: int) -> None:
    """Record the cut in ``unmapped.flowtrap`` (OCSF has no tags)."""
    unmapped = dict(document.get("unmapped", {}))
    flowtrap = dict(unmapped.get("flowtrap", {}))
    flowtrap[TRIMMED_TAG] = removed
    unmapped["flowtrap"] = flowtrap
    document["unmapped"] = unmapped


ECS = EventFormat("ecs", ecs_document, ("flowtrap", "sample"), _tag_trimmed)
OCSF = EventFormat(
    "ocsf", ocsf_document, ("unmapped", "flowtrap", "sample"), _note_trimmed
)

# Formats by the name `event_format` takes.
FORMATS: dict[str, EventFormat] = {ECS.name: ECS, OCSF.name: OCSF}
