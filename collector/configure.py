"""Loading the configuration: a TOML file, ``FLOWTRAP_*`` variables, then flags.

Flags override the environment, which overrides the file. Each value remembers
where it came from, so a problem names both the setting's path and its source.
Nothing here opens a socket: the whole configuration is checked first.
"""

from __future__ import annotations

import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from collector.outputs.formats import FORMATS
from detectors import registry
from detectors.base import DetectionContext, DetectorConfigError
from detectors.networks import Networks
from detectors.registry import UnknownDetectorError
from schemas.config import Config, DetectionConfig

# How detectors begin the message of a settings error; the path follows it.
_INVALID = "invalid configuration: "

ENV_PREFIX = "FLOWTRAP_"
# Environment variables that name no setting but are not mistakes: the config
# file, and the test suite's switches.
ENV_OTHER = ("FLOWTRAP_CONFIG", "FLOWTRAP_REQUIRE_")

SettingPath = tuple[str, ...]


class ConfigError(Exception):
    """A configuration that cannot start; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the configuration, where it is and where it came from."""

    path: str
    message: str
    source: str

    def __str__(self) -> str:
        """Format as ``path: message (source)``."""
        where = f" (from {self.source})" if self.source else ""
        return f"{self.path}: {self.message}{where}"


class ConfigProblems(ConfigError):
    """Every problem found in one configuration."""

    def __init__(self, problems: list[Problem]) -> None:
        """Keep the problems; the message lists them one per line."""
        self.problems = problems
        lines = "\n".join(f"  {problem}" for problem in problems)
        super().__init__(f"invalid configuration:\n{lines}")


@dataclass(slots=True)
class Layers:
    """The merged raw settings and the source of each one."""

    data: dict[str, Any]
    sources: dict[SettingPath, str]

    def set(self, path: SettingPath, value: Any, source: str) -> None:
        """Set one setting, creating the tables on its path."""
        table = self.data
        for key in path[:-1]:
            inner = table.get(key)
            if not isinstance(inner, dict):
                inner = {}
            table[key] = inner = dict(inner)
            table = inner
        table[path[-1]] = value
        self.sources[path] = source

    def source(self, path: tuple[str | int, ...]) -> str:
        """Return where the setting at ``path`` (or its nearest parent) came from."""
        keys = tuple(str(part) for part in path)
        for end in range(len(keys), 0, -1):
            found = self.sources.get(keys[:end])
            if found is not None:
                return found
        return "default"


def read_file(path: Path) -> dict[str, Any]:
    """Read a TOML config file, or raise ConfigError saying why not."""
    try:
        return tomllib.loads(path.read_text())
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None


def _leaves(model: type[BaseModel], prefix: SettingPath = ()) -> dict[str, SettingPath]:
    """Map each ``FLOWTRAP_*`` name to the setting it sets."""
    names: dict[str, SettingPath] = {}
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names.update(_leaves(annotation, path))
        elif typing.get_origin(annotation) is not dict:
            names[ENV_PREFIX + "__".join(path).upper()] = path
    return names


def _is_list(model: type[BaseModel], path: SettingPath) -> bool:
    """Return True when the setting at ``path`` takes a list."""
    annotation: Any = model
    for name in path:
        annotation = annotation.model_fields[name].annotation
    options = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    return any(typing.get_origin(option) is list for option in options)


def _is_union(annotation: Any) -> bool:
    """Return True for ``X | Y`` and ``Optional[X]``."""
    origin = typing.get_origin(annotation)
    return origin is typing.Union or origin is types.UnionType


def environment(environ: Mapping[str, str]) -> tuple[Layers, list[str]]:
    """Read ``FLOWTRAP_*`` settings; return them and the names that set nothing.

    Lists are comma-separated; an empty value unsets an optional setting.
    """
    layers = Layers({}, {})
    names = _leaves(Config)
    unknown = []
    for name, text in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name.startswith(ENV_OTHER):
            continue
        path = names.get(name)
        if path is None:
            unknown.append(name)
            continue
        value: Any = text
        if _is_list(Config, path):
            value = split(text) if text.strip() else None
        elif not text.strip():
            value = None
        layers.set(path, value, name)
    return layers, unknown


def split(text: str) -> list[str]:
    """Split a comma-separated option into its non-empty parts."""
    return [part.strip() for part in text.split(",") if part.strip()]


def merge(
    file: Path | None,
    flags: Mapping[SettingPath, tuple[Any, str]],
    environ: Mapping[str, str],
) -> tuple[Layers, list[str]]:
    """Layer the file, the environment and the flags (each ``value, flag name``)."""
    layers = Layers({}, {})
    if file is not None:
        layers.data = read_file(file)
        _note_file(layers, layers.data, (), str(file))

    env, unknown = environment(environ)
    for path, source in env.sources.items():
        layers.set(path, _get(env.data, path), source)
    for path, (value, flag) in flags.items():
        layers.set(path, value, flag)
    return layers, unknown


def _note_file(
    layers: Layers, table: Mapping[str, Any], prefix: SettingPath, source: str
) -> None:
    """Record the file as the source of every setting it holds."""
    for key, value in table.items():
        path = (*prefix, key)
        layers.sources[path] = source
        if isinstance(value, dict):
            _note_file(layers, value, path, source)


def _get(data: Mapping[str, Any], path: SettingPath) -> Any:
    """Read one setting out of nested tables."""
    value: Any = data
    for key in path:
        value = value[key]
    return value


def validate(layers: Layers) -> Config:
    """Validate the merged settings, or raise ConfigProblems listing each one."""
    problems = _names(layers)
    try:
        config = Config.model_validate(layers.data)
    except ValidationError as error:
        problems = [
            Problem(
                dotted(issue["loc"]),
                issue["msg"].removeprefix("Value error, "),
                layers.source(issue["loc"]),
            )
            for issue in error.errors()
        ] + problems
        raise ConfigProblems(problems) from None
    if problems:
        raise ConfigProblems(problems)
    return config


def dotted(location: tuple[str | int, ...]) -> str:
    """Write a setting's location as ``output.file.keep`` or ``events[1]``."""
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "(top level)"


def _names(layers: Layers) -> list[Problem]:
    """Check what only the registries know: detectors, their settings, formats."""
    problems = []
    detection = layers.data.get("detection", {})
    detection = detection if isinstance(detection, dict) else {}
    enabled = detection.get("enabled", DetectionConfig().enabled)
    options = detection.get("detectors", {})
    if isinstance(enabled, list) and isinstance(options, dict):
        context = DetectionContext(Networks(), options)
        try:
            registry.build([str(name) for name in enabled], context)
        except UnknownDetectorError as error:
            problems.append(
                Problem(
                    "detection.enabled",
                    str(error),
                    _source(layers, "detection.enabled"),
                )
            )
        except DetectorConfigError as error:
            # "invalid configuration: PATH: MESSAGE; PATH: MESSAGE"
            text = str(error).removeprefix(_INVALID)
            for part in re.split(r"; (?=detection\.)", text):
                path, _, message = part.partition(": ")
                problems.append(Problem(path, message, _source(layers, path)))

    event_format = layers.data.get("event_format", "ecs")
    if isinstance(event_format, str) and event_format not in FORMATS:
        problems.append(
            Problem(
                "event_format",
                f"unknown event format {event_format}; known formats: "
                + ", ".join(sorted(FORMATS)),
                layers.source(("event_format",)),
            )
        )
    return problems


def _source(layers: Layers, path: str) -> str:
    """Return the source of a dotted setting path."""
    return layers.source(tuple(path.split(".")))


def config_file(flag: Path | None, environ: Mapping[str, str]) -> Path | None:
    """Return the config file: the --config flag, else ``FLOWTRAP_CONFIG``."""
    if flag is not None:
        return flag
    named = environ.get("FLOWTRAP_CONFIG", "").strip()
    return Path(named) if named else None
