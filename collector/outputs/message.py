"""What the outputs queue: one rendered event, and its encoding under a size cap."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from collector.outputs.formats import EventFormat
from schemas.event import Document


@dataclass(frozen=True, slots=True)
class Message:
    """An event rendered once and shared, read-only, by every output."""

    document: Document
    created: datetime
    severity: int
    detector: str
    format: EventFormat

    @classmethod
    def of(cls, event: Document, event_format: EventFormat) -> Message:
        """Render an event in the chosen format."""
        return cls(
            document=event_format.render(event),
            created=datetime.fromisoformat(event["@timestamp"]),
            severity=event["event"]["severity"],
            detector=event["rule"]["name"],
            format=event_format,
        )


@dataclass(frozen=True, slots=True)
class Encoded:
    """A document as JSON bytes, and how many sample records were cut."""

    data: bytes
    removed: int = 0
    oversize: bool = False


def encode(message: Message, cap: int) -> Encoded:
    """Serialise a message in at most ``cap`` bytes by trimming its flow sample.

    Records leave the sample from its end until the document fits; the document
    is then marked as trimmed. A document that does not fit even with an empty
    sample is written whole and reported as oversize, never dropped.
    """
    data = orjson.dumps(message.document)
    if len(data) <= cap:
        return Encoded(data)

    document, sample = _copy_to_sample(message.document, message.format.sample)
    if not sample:
        return Encoded(data, oversize=True)
    full = len(sample)
    while sample:
        sample.pop()
        removed = full - len(sample)
        message.format.mark_trimmed(document, removed)
        data = orjson.dumps(document)
        if len(data) <= cap:
            return Encoded(data, removed)
    return Encoded(data, full, oversize=True)


def _copy_to_sample(
    document: Document, path: tuple[str, ...]
) -> tuple[Document, list[Any]]:
    """Copy the tables on the way to the sample, so the shared one stays intact."""
    top = dict(document)
    table = top
    for key in path[:-1]:
        inner = table.get(key)
        if not isinstance(inner, dict):
            return top, []
        table[key] = inner = dict(inner)
        table = inner
    sample = table.get(path[-1])
    if not isinstance(sample, list):
        return top, []
    table[path[-1]] = sample = list(sample)
    return top, sample
