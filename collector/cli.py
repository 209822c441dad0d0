"""The ``flowtrap`` command line: run, replay, check-config and schema."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from tqdm import tqdm

from collector import outputs
from collector.capture import CaptureError, read_capture
from collector.configure import ConfigError, SettingPath, config_file, merge, split
from collector.configure import validate as validate_config
from collector.logs import setup_logging
from collector.pipeline import Pipeline
from collector.service import Service, make_pipeline
from detectors.networks import Networks
from schemas.config import Config
from schemas.event import Event
from schemas.flow import FlowRecord

log = logging.getLogger("flowtrap")

# A replay on a terminal shows a progress bar once it has run this long, so
# small captures finish without one.
PROGRESS_DELAY = 1.0


# Each flag: its argparse destination, the setting it sets, how to read it.
_FLAGS: tuple[tuple[str, SettingPath, Callable[[Any], Any]], ...] = (
    ("listen", ("listen",), list),
    ("listen_tcp", ("listen_tcp",), list),
    ("state_file", ("state_file",), str),
    ("events", ("events",), list),
    ("internal_networks", ("internal_networks",), split),
    ("allowed_exporters", ("allowed_exporters",), split),
    ("proxy_protocol_from", ("proxy_protocol_from",), split),
    ("metrics", ("metrics",), str),
    ("cluster", ("cluster",), str),
    ("workers", ("workers",), str),
    ("detectors", ("detection", "enabled"), split),
    ("window", ("detection", "window_seconds"), str),
    ("event_format", ("event_format",), str),
    ("log_format", ("log_format",), str),
    ("log_level", ("log_level",), str),
)


def _common(parser: argparse.ArgumentParser) -> None:
    """Add the detection and output options shared by every command."""
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument(
        "--events",
        action="append",
        metavar="TARGET",
        help="event output (repeatable): - for stdout, a file path, "
        "syslog+udp://, syslog+tcp:// or syslog+tls://HOST[:PORT], "
        "or nats://HOST:PORT/SUBJECT",
    )
    parser.add_argument(
        "--internal-networks",
        metavar="CIDR,...",
        help="networks that are inside (replaces the default list)",
    )
    parser.add_argument("--detectors", help="comma-separated detector names to enable")
    parser.add_argument("--window", help="event window in seconds")
    parser.add_argument("--event-format", help="ecs (default) or ocsf")
    parser.add_argument("--log-format", help="text (default) or json")
    parser.add_argument("--log-level", help="debug, info (default), warning or error")


def _live(parser: argparse.ArgumentParser) -> None:
    """Add the options only a live collector has."""
    parser.add_argument(
        "--listen",
        action="append",
        metavar="HOST:PORT",
        help="UDP address to listen on (repeatable; default 0.0.0.0:2055 and "
        "0.0.0.0:4739)",
    )
    parser.add_argument(
        "--listen-tcp",
        action="append",
        metavar="HOST:PORT",
        help="TCP address taking IPFIX over TCP (repeatable; none by default)",
    )
    parser.add_argument(
        "--state-file",
        metavar="PATH",
        help="keep templates across restarts in this file",
    )
    parser.add_argument(
        "--allowed-exporters",
        metavar="CIDR,...",
        help="only these exporters may send; others are dropped and counted",
    )
    parser.add_argument(
        "--proxy-protocol-from",
        metavar="CIDR,...",
        help="load balancers whose PROXY headers name the exporter (UDP only)",
    )
    parser.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve /metrics, /healthz and /readyz here (a bare PORT is on 127.0.0.1)",
    )
    parser.add_argument(
        "--workers",
        metavar="N",
        help="receive and decode UDP in N processes (one core each), detect in one",
    )
    parser.add_argument(
        "--cluster",
        metavar="nats://HOST:PORT",
        help="join other collectors through NATS JetStream: shared findings, "
        "each event written once",
    )
    _common(parser)


def _parser() -> argparse.ArgumentParser:
    """Build the argument parser."""
    parser = argparse.ArgumentParser(
        prog="flowtrap",
        description="NetFlow v5/v9 and IPFIX collector with built-in detection.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _live(commands.add_parser("run", help="collect live export packets over UDP"))

    replay = commands.add_parser(
        "replay", help="run pcap/pcapng captures through the same pipeline"
    )
    replay.add_argument("captures", nargs="+", type=Path, metavar="CAPTURE")
    replay.add_argument(
        "--port", type=_port, help="only UDP datagrams to this port (1-65535)"
    )
    _common(replay)

    _live(
        commands.add_parser(
            "check-config",
            help="validate the configuration (file, FLOWTRAP_* and flags) and print it",
        )
    )

    schema = commands.add_parser("schema", help="print a JSON Schema")
    schema.add_argument("name", choices=["event", "flow", "config"])
    return parser


def flag_settings(args: argparse.Namespace) -> dict[SettingPath, tuple[Any, str]]:
    """Return the settings the flags give, each with its flag's name."""
    found = {}
    for name, path, read in _FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            found[path] = (read(value), "--" + name.replace("_", "-"))
    return found


def _port(text: str) -> int:
    """Parse a UDP port number for --port."""
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port from 1 to 65535")
    return int(text)


def load_config(args: argparse.Namespace) -> Config:
    """Merge the file, the environment and the flags, and validate once."""
    file = config_file(args.config, os.environ)
    layers, unknown = merge(file, flag_settings(args), os.environ)
    for name in unknown:
        log.warning("environment variable sets nothing", extra={"variable": name})
    return validate_config(layers)


def _configured(args: argparse.Namespace, quiet: bool = False) -> Config:
    """Load the config and set up logging as it says.

    ``quiet`` (replay) logs warnings and worse unless --log-level says otherwise,
    so that the summary on standard error stays readable.
    """
    config = load_config(args)
    level = config.log_level
    if quiet and getattr(args, "log_level", None) is None:
        level = "warning"
    setup_logging(level, config.log_format)
    return config


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


def progress_bar(paths: Sequence[Path]) -> tqdm[Any] | None:
    """Return a progress bar over the captures' bytes, on a terminal only."""
    if not sys.stderr.isatty():
        return None
    total = 0
    for path in paths:
        try:
            total += path.stat().st_size
        except OSError:
            continue
    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        desc="replay",
        file=sys.stderr,
        delay=PROGRESS_DELAY,
        leave=False,
    )


def cmd_replay(args: argparse.Namespace) -> int:
    """Run captures through the pipeline with the capture's own clock."""
    config = _configured(args, quiet=True)
    sink = outputs.build(config)
    pipeline = make_pipeline(config, sink, Networks(config.internal_networks))
    try:
        sink.start()
    except outputs.OutputError as error:
        raise ConfigError(str(error)) from None
    skipped: Counter[str] = Counter()
    bar = progress_bar(args.captures)
    try:
        for path in args.captures:
            advance = None if bar is None else _advancer(bar, int(bar.n))
            try:
                for datagram in read_capture(path, args.port, skipped, advance):
                    pipeline.feed(datagram)
            except CaptureError as error:
                raise ConfigError(str(error)) from None
    finally:
        if bar is not None:
            bar.close()
        never = pipeline.decoder.store.drain_held()
        pipeline.flush()
    report = summary(pipeline, skipped)
    report["held_never_decoded"] = never
    print(json.dumps(report, indent=2), file=sys.stderr)
    return 0


def _advancer(bar: tqdm[Any], base: int) -> Callable[[int], None]:
    """Return a callback moving the bar to ``base`` plus a file offset."""

    def advance(offset: int) -> None:
        bar.update(base + offset - int(bar.n))

    return advance


def cmd_run(args: argparse.Namespace) -> int:
    """Start the live collector."""
    config = _configured(args)
    service = Service(config, lambda: load_config(args))
    service.prepare()
    return asyncio.run(service.run())


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the configuration; print it, or every problem with its path."""
    config = load_config(args)
    print(json.dumps(config.model_dump(mode="json"), indent=2))
    print("flowtrap: configuration is valid", file=sys.stderr)
    return 0


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
    handlers = {
        "run": cmd_run,
        "replay": cmd_replay,
        "check-config": cmd_check_config,
        "schema": cmd_schema,
    }
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
