"""The detector registry: names to factories, and building the enabled set."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from detectors.base import DetectionContext, Detector

Factory = Callable[[DetectionContext], Detector]

_FACTORIES: dict[str, Factory] = {}


class UnknownDetectorError(ValueError):
    """A configured detector name that no detector registered."""


def register(name: str) -> Callable[[Factory], Factory]:
    """Register a detector factory under a name (used as a class decorator)."""

    def add(factory: Factory) -> Factory:
        _FACTORIES[name] = factory
        return factory

    return add


def known() -> list[str]:
    """Return the registered detector names, sorted."""
    _load_builtin()
    return sorted(_FACTORIES)


def build(names: Iterable[str], context: DetectionContext) -> list[Detector]:
    """Build the detectors named in the config, refusing unknown names."""
    _load_builtin()
    wanted = list(dict.fromkeys(names))
    unknown = [name for name in wanted if name not in _FACTORIES]
    if unknown:
        raise UnknownDetectorError(
            f"unknown detector {', '.join(unknown)}; "
            f"known detectors: {', '.join(sorted(_FACTORIES))}"
        )
    return [_FACTORIES[name](context) for name in wanted]


def _load_builtin() -> None:
    """Import the built-in detector modules so that they register."""
    import detectors.cups  # noqa: F401 - imported for its registrations
