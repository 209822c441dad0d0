"""The detector registry: names to factories, built-in and from installed packages.

A third-party package adds detectors through the ``flowtrap.detectors`` entry
point group: each entry point's name is the detector's name and its object is
a factory (usually the detector class) that takes a ``DetectionContext``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points

from detectors.base import DetectionContext, Detector, DetectorConfigError
from detectors.settings import DetectorSettings

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "flowtrap.detectors"

Factory = Callable[[DetectionContext], Detector]

_FACTORIES: dict[str, Factory] = {}
_BROKEN: dict[str, str] = {}
_loaded = False


class UnknownDetectorError(DetectorConfigError):
    """A configured detector name that no detector registered."""


def register(name: str) -> Callable[[Factory], Factory]:
    """Register a detector factory under a name (used as a class decorator)."""

    def add(factory: Factory) -> Factory:
        _FACTORIES[name] = factory
        return factory

    return add


def known() -> list[str]:
    """Return the registered detector names, sorted."""
    _load()
    return sorted(_FACTORIES)


def build(names: Iterable[str], context: DetectionContext) -> list[Detector]:
    """Build the detectors named in the config, refusing unknown names.

    A detector whose settings say ``enabled = false`` is left out; settings for
    a detector that does not exist are an error, as are invalid settings.
    """
    _load()
    wanted = list(dict.fromkeys(names))
    unknown = [name for name in wanted if name not in _FACTORIES]
    broken = [f"{name} ({_BROKEN[name]})" for name in unknown if name in _BROKEN]
    if broken:
        raise UnknownDetectorError(f"detector failed to load: {', '.join(broken)}")
    if unknown:
        raise UnknownDetectorError(
            f"unknown detector {', '.join(unknown)}; "
            f"known detectors: {', '.join(sorted(_FACTORIES))}"
        )
    stray = sorted(set(context.options) - set(_FACTORIES))
    if stray:
        raise UnknownDetectorError(
            f"settings for unknown detector {', '.join(stray)}; "
            f"known detectors: {', '.join(sorted(_FACTORIES))}"
        )

    detectors = []
    for name in wanted:
        factory = _FACTORIES[name]
        model = getattr(factory, "settings_model", DetectorSettings)
        if not context.settings_for(name, model).enabled:
            continue
        detectors.append(factory(context))
    return detectors


def _load() -> None:
    """Register the built-in detectors, then those of installed packages, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import detectors.cups
    import detectors.cups_callback
    import detectors.cups_fanout  # noqa: F401 - imported for their registrations

    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name in _FACTORIES:
            log.warning(
                "detector name taken, plugin ignored",
                extra={"detector": point.name, "plugin": point.value},
            )
            continue
        try:
            _FACTORIES[point.name] = point.load()
        except Exception as error:
            # A broken plugin costs only itself; naming it in the config then
            # stops start-up with this reason.
            _BROKEN[point.name] = f"{type(error).__name__}: {error}"
            log.warning(
                "detector plugin failed to load",
                extra={"detector": point.name, "error": _BROKEN[point.name]},
            )
