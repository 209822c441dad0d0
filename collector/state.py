"""Template and options state kept across restarts.

Without it a restarted collector cannot decode anything until each exporter
resends its templates, which some do only every 30 minutes (or, like pmacct,
only at start). The file is written atomically (temporary file, fsync, rename)
and validated on load; a file that fails validation is set aside, never trusted
and never fatal.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from collector.decoder import MAX_TEMPLATE_FIELDS, Decoder
from collector.layout import FieldSpec, Layout
from collector.options import DomainOptions, OptionsStore

log = logging.getLogger(__name__)

# A state file larger than this is not read: no real deployment comes near it
# (10,000 exporters with 5 templates each take about 20 MB).
MAX_STATE_BYTES = 256 * 1024 * 1024


class _Model(BaseModel):
    """Strict parts of the state file."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SavedTemplate(_Model):
    """One template of one exporter."""

    version: Literal[9, 10]
    domain: int = Field(ge=0, lt=2**32)
    template_id: int = Field(ge=256, lt=65536)
    options: bool
    scope_count: int = Field(ge=0)
    fields: list[tuple[int, int, int]] = Field(max_length=MAX_TEMPLATE_FIELDS)
    refreshed: float


class SavedExporter(_Model):
    """The templates of one exporter."""

    address: str
    port: int = Field(ge=0, lt=65536)
    templates: list[SavedTemplate]


class SavedOptions(_Model):
    """What options records said about one (exporter, domain)."""

    exporter: str
    domain: int = Field(ge=0, lt=2**32)
    sampling: dict[int, int]
    system_init_ms: int | None


class StateFile(_Model):
    """The whole state file."""

    format: Literal["flowtrap-state"] = "flowtrap-state"
    version: Literal[1] = 1
    saved_at: float
    exporters: list[SavedExporter]
    options: list[SavedOptions]


def snapshot(decoder: Decoder, options: OptionsStore) -> StateFile:
    """Capture the decoder's templates and the options state."""
    exporters = []
    for address, port, state in decoder.store.exporters():
        templates = [
            SavedTemplate(
                version=key[0],
                domain=key[1],
                template_id=key[2],
                options=layout.options,
                scope_count=layout.scope_count,
                fields=[(f.element_id, f.length, f.enterprise) for f in layout.fields],
                refreshed=state.refreshed.get(key, 0.0),
            )
            for key, layout in state.templates.items()
        ]
        if templates:
            exporters.append(
                SavedExporter(address=address, port=port, templates=templates)
            )
    saved_options = [
        SavedOptions(
            exporter=exporter,
            domain=domain,
            sampling=dict(entry.sampling),
            system_init_ms=entry.system_init_ms,
        )
        for (exporter, domain), entry in options.items()
    ]
    return StateFile(saved_at=time.time(), exporters=exporters, options=saved_options)


def save(path: Path, decoder: Decoder, options: OptionsStore) -> None:
    """Write the state atomically: a reader sees the old file or the new one."""
    data = orjson.dumps(snapshot(decoder, options).model_dump(mode="json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(descriptor, data)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def worker_path(base: Path, index: int) -> Path:
    """Return the state file of worker ``index`` (``--workers``)."""
    return base.with_name(f"{base.name}.worker{index}")


def family(base: Path) -> list[Path]:
    """Return the state files saved under one configured path.

    One process saves ``base``, worker *i* ``base.worker<i>``; after a change
    of ``--workers`` an exporter's templates may sit in any of them.
    """
    found = [base, *sorted(base.parent.glob(f"{glob.escape(base.name)}.worker*"))]
    return [p for p in found if ".corrupt-" not in p.name and p.is_file()]


def read(path: Path) -> StateFile | None:
    """Read and validate one state file; None when there is none (first start).

    An unreadable or invalid one is renamed aside with a warning, and its
    templates are learned from the exporters again.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    try:
        if size > MAX_STATE_BYTES:
            raise ValueError(f"{size} bytes is more than a state file can hold")
        return StateFile.model_validate(orjson.loads(path.read_bytes()))
    except (OSError, ValueError, ValidationError) as error:
        aside = path.with_name(f"{path.name}.corrupt-{time.time_ns()}")
        with contextlib.suppress(OSError):
            os.replace(path, aside)
        log.warning(
            "state file set aside; templates will be learned from exporters again",
            extra={
                "path": str(path),
                "moved_to": str(aside),
                "reason": str(error)[:200],
            },
        )
        return None


def read_family(base: Path) -> list[StateFile]:
    """Read every state file saved under one configured path."""
    return [state for path in family(base) if (state := read(path)) is not None]


def restore(
    states: list[StateFile],
    decoder: Decoder,
    options: OptionsStore,
    keep: Callable[[str], bool] | None = None,
) -> int:
    """Put saved states into a decoder; ``keep`` picks the exporters."""
    return sum(_restore(state, decoder, options, keep) for state in states)


def load(path: Path, decoder: Decoder, options: OptionsStore) -> int:
    """Load a state file (and those beside it) into a decoder; return templates."""
    return restore(read_family(path), decoder, options)


def _restore(
    state: StateFile,
    decoder: Decoder,
    options: OptionsStore,
    keep: Callable[[str], bool] | None,
) -> int:
    """Put validated state into the decoder and options store."""
    restored = 0
    for saved in state.exporters:
        if keep is not None and not keep(saved.address):
            continue
        exporter = decoder.store.exporter(saved.address, saved.port)
        if exporter is None:
            break
        for template in saved.templates:
            fields = tuple(FieldSpec(*spec) for spec in template.fields)
            layout = Layout.compile(
                template.template_id,
                fields,
                options=template.options,
                scope_count=template.scope_count,
            )
            if layout.record_length == 0:
                continue
            key = (template.version, template.domain, template.template_id)
            if decoder.store.learn(exporter, key, layout, template.refreshed):
                restored += 1
    for entry in state.options:
        if keep is not None and not keep(entry.exporter):
            continue
        options.restore(
            entry.exporter,
            entry.domain,
            DomainOptions(dict(entry.sampling), entry.system_init_ms),
        )
    log.info("state loaded", extra={"templates": restored})
    return restored
