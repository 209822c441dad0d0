"""The ``flowtrap`` command line: run, replay and schema."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from collector.capture import CaptureError, read_capture
from collector.decoder import Decoder
from collector.listener import Listener
from collector.logs import setup_logging
from collector.pipeline import Pipeline
from collector.records import TimeRules
from collector.sinks import JsonLinesSink
from collector.templates import Limits
from detectors.base import DetectionContext
from detectors.networks import Networks
from detectors.registry import UnknownDetectorError, build
from detectors.windows import Windows, WindowSettings
from schemas.config import Config
from schemas.event import Event
from schemas.flow import FlowRecord

log = logging.getLogger("flowtrap")

# How often the live clock advances when no datagram arrives, so that windows
# still close on a quiet network.
TICK_SECONDS = 1.0


class ConfigError(Exception):
    """A configuration that cannot start; the message says what to fix."""


def _common(parser: argparse.ArgumentParser) -> None:
    """Add the detection and output options shared by run and replay."""
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument("--events", help="event output: a file path, or - for stdout")
    parser.add_argument(
        "--internal-networks",
        help="comma-separated CIDRs that are inside (replaces the default list)",
    )
    parser.add_argument("--detectors", help="comma-separated detector names to enable")
    parser.add_argument("--window", type=float, help="event window in seconds")


def _parser() -> argparse.ArgumentParser:
    """Build the argument parser."""
    parser = argparse.ArgumentParser(
        prog="flowtrap",
        description="NetFlow v5/v9 and IPFIX collector with built-in detection.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="collect live export packets over UDP")
    run.add_argument(
        "--listen",
        action="append",
        metavar="HOST:PORT",
        help="UDP address to listen on (repeatable; default 0.0.0.0:2055 and "
        "0.0.0.0:4739)",
    )
    _common(run)

    replay = commands.add_parser("replay", help="run pcap/pcapng captures through")
    replay.add_argument("captures", nargs="+", type=Path, metavar="CAPTURE")
    replay.add_argument("--port", type=int, help="only UDP datagrams to this port")
    _common(replay)

    schema = commands.add_parser("schema", help="print a JSON Schema")
    schema.add_argument("name", choices=["event", "flow", "config"])
    return parser


def load_config(args: argparse.Namespace) -> Config:
    """Merge the config file and flags (flags win) and validate once."""
    data: dict[str, Any] = {}
    if args.config is not None:
        try:
            data = tomllib.loads(args.config.read_text())
        except OSError as error:
            raise ConfigError(f"cannot read {args.config}: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{args.config} is not valid TOML: {error}") from None

    if getattr(args, "listen", None):
        data["listen"] = args.listen
    if args.events is not None:
        data["events"] = args.events
    if args.internal_networks is not None:
        data["internal_networks"] = _split(args.internal_networks)
    detection = dict(data.get("detection", {}))
    if args.detectors is not None:
        detection["enabled"] = _split(args.detectors)
    if args.window is not None:
        detection["window_seconds"] = args.window
    if detection:
        data["detection"] = detection

    try:
        return Config.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in issue['loc'])}: {issue['msg']}"
            for issue in error.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None


def _split(text: str) -> list[str]:
    """Split a comma-separated option into its non-empty parts."""
    return [part.strip() for part in text.split(",") if part.strip()]


def make_pipeline(config: Config, sink: JsonLinesSink) -> Pipeline:
    """Build the decoder, detectors, windows and sinks from the config."""
    limits = config.limits
    decoder = Decoder(
        Limits(
            max_exporters=limits.max_exporters,
            max_templates_per_exporter=limits.max_templates_per_exporter,
            held_flowsets_per_exporter=limits.held_flowsets_per_exporter,
            held_bytes_per_exporter=limits.held_bytes_per_exporter,
            held_bytes_total=limits.held_bytes_total,
            held_max_age=limits.held_max_age_seconds,
            scope_by_port=limits.template_scope_by_port,
        )
    )
    networks = Networks(config.internal_networks)
    try:
        detectors = build(config.detection.enabled, DetectionContext(networks))
    except UnknownDetectorError as error:
        raise ConfigError(str(error)) from None
    detection = config.detection
    windows = Windows(
        WindowSettings(
            seconds=detection.window_seconds,
            lateness=detection.lateness_seconds,
            max_open=detection.max_open_windows,
            sample_size=detection.sample_size,
        )
    )
    rules = TimeRules(tolerance_ms=int(config.time_tolerance_seconds * 1000))
    return Pipeline(decoder, detectors, windows, [sink], rules)


def summary(pipeline: Pipeline, skipped: Counter[str]) -> dict[str, Any]:
    """Return the counters a replay reports."""
    counts = pipeline.stats.counts
    return {
        "export_packets": counts["export_packets"],
        "flow_records": counts["flow_records"],
        "options_records": counts["options_records"],
        "templates_learned": counts["templates_learned"],
        "flowsets_held": counts["flowsets_held"],
        "held_decoded": counts["held_decoded"],
        "findings": dict(pipeline.findings),
        "events": dict(pipeline.events),
        "errors": dict(sorted(pipeline.stats.errors.items())),
        "frames_skipped": dict(sorted(skipped.items())),
    }


def cmd_replay(args: argparse.Namespace) -> int:
    """Run captures through the pipeline with the capture's own clock."""
    config = load_config(args)
    pipeline = make_pipeline(config, JsonLinesSink(config.events))
    skipped: Counter[str] = Counter()
    for path in args.captures:
        try:
            for datagram in read_capture(path, args.port, skipped):
                pipeline.feed(datagram)
        except CaptureError as error:
            raise ConfigError(str(error)) from None
    never = pipeline.decoder.store.drain_held()
    pipeline.flush()
    report = summary(pipeline, skipped)
    report["held_never_decoded"] = never
    print(json.dumps(report, indent=2), file=sys.stderr)
    return 0


async def _serve(config: Config) -> int:
    """Run the live collector until SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    pipeline = make_pipeline(config, JsonLinesSink(config.events))
    listener = Listener(config.listen, config.receive_buffer_bytes, pipeline.feed)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        listener.start(loop)
    except OSError as error:
        raise ConfigError(str(error)) from None
    log.info("collector started", extra={"listen": listener.addresses()})

    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), TICK_SECONDS)
        except TimeoutError:
            pipeline.advance(time.time())

    # Order matters: stop reading, decode what was received, then close every
    # window so that its event is written before the sinks close.
    listener.stop(loop)
    pipeline.advance(time.time())
    pipeline.flush()
    log.info(
        "collector stopped",
        extra={
            "datagrams": listener.received,
            "flow_records": pipeline.stats.counts["flow_records"],
            "events": sum(pipeline.events.values()),
            "errors": dict(pipeline.stats.errors),
        },
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Start the live collector."""
    config = load_config(args)
    return asyncio.run(_serve(config))


_SCHEMAS: dict[str, type[BaseModel]] = {
    "event": Event,
    "flow": FlowRecord,
    "config": Config,
}


def cmd_schema(args: argparse.Namespace) -> int:
    """Print one JSON Schema."""
    model = _SCHEMAS[args.name]
    schema = model.model_json_schema(by_alias=True)
    print(json.dumps(schema, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flowtrap`` console script."""
    args = _parser().parse_args(argv)
    setup_logging()
    handlers = {"run": cmd_run, "replay": cmd_replay, "schema": cmd_schema}
    try:
        return handlers[args.command](args)
    except ConfigError as error:
        print(f"flowtrap: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our output went away (for example `| head`); stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
