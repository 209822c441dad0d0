"""Building the pipeline that ``flowtrap run`` builds, without its sockets or files.

The in-process benchmarks need the same decoder, detectors and windows as the
live collector, but a sink that only counts: writing events is measured live.
This is the one place that knows how the CLI assembles a pipeline.
"""

from __future__ import annotations

from typing import Any

from collector.pipeline import Pipeline
from collector.service import make_pipeline
from detectors.networks import Networks
from schemas.config import Config


class CountingSink:
    """A sink that keeps no event, only their number."""

    def __init__(self) -> None:
        """Start at zero."""
        self.written = 0

    def write(self, event: Any) -> None:
        """Count one event."""
        self.written += 1

    def close(self) -> None:
        """Nothing to release."""


def default_config() -> Config:
    """Return the configuration ``flowtrap run`` uses with no file and no flags."""
    return Config.model_validate({})


def build_pipeline(sink: CountingSink | None = None) -> Pipeline:
    """Return the pipeline the CLI builds from the default configuration."""
    config = default_config()
    counting = sink or CountingSink()
    return make_pipeline(config, counting, Networks(config.internal_networks))


def enabled_detectors(pipeline: Pipeline) -> list[str]:
    """Return the names of the detectors the pipeline runs."""
    return [detector.rule.name for detector in pipeline.detectors]
