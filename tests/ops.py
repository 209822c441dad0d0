"""Helpers for the operations tests: fresh export packets, scrapes, event files."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.packets import (
    FIVE_TUPLE_FIELDS,
    five_tuple,
    flowset,
    template_record,
    u16,
    u32,
)

_METRICS = re.compile(r"metrics=(?P<address>\S+)")

# Scraped samples by metric name and sorted label pairs.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def egress_packet(now: float | None = None, src: str = "10.1.0.5") -> bytes:
    """An IPFIX message, stamped now, with one internal→external UDP/631 flow.

    The flow carries no times of its own, so it is placed at the export time:
    its window is still open until the collector stops or the window ends.
    """
    secs = int(time.time() if now is None else now)
    body = flowset(2, template_record(256, FIVE_TUPLE_FIELDS)) + flowset(
        256, five_tuple(src, "203.0.113.10", 40001, 631, pkts=3)
    )
    header = (
        u16(10)  # version
        + u16(16 + len(body))  # message length
        + u32(secs)  # export time
        + u32(1)  # sequence number
        + u32(0)  # observation domain id
    )
    return header + body


def metrics_address(started: str) -> str:
    """Return HOST:PORT of the metrics server from the "collector started" line."""
    match = _METRICS.search(started)
    assert match, started
    return match.group("address")


def http_get(url: str) -> tuple[int, str]:
    """GET a URL on 127.0.0.1; return the status and body."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(address: str) -> Samples:
    """Scrape /metrics; return every sample by name and sorted labels."""
    status, body = http_get(f"http://{address}/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape_until(
    address: str, ready: Callable[[Samples], bool], what: str = ""
) -> Samples:
    """Scrape until ``ready`` accepts the samples; return them."""
    found: list[Samples] = []

    def check() -> bool:
        found[:] = [scrape(address)]
        return ready(found[0])

    wait_for(check, what=what)
    return found[0]


def sample(samples: Samples, name: str, **labels: str) -> float:
    """Return one sample's value (0 when absent)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def event_files(link: Path) -> list[Path]:
    """Return the event files written for a configured path, oldest first."""
    return sorted(link.parent.glob(f"{link.stem}-*{link.suffix}"))


def read_all_events(link: Path) -> list[dict[str, Any]]:
    """Read the events of every file written for a configured path."""
    events = []
    for path in event_files(link):
        events += [orjson.loads(line) for line in path.read_bytes().splitlines()]
    return events


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Poll ``check`` until it returns something true, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.05)


def exporter_packets(samples: Samples) -> dict[str, float]:
    """Return export packets decoded, by exporter label."""
    return {
        dict(labels)["exporter"]: value
        for (name, labels), value in samples.items()
        if name == "flowtrap_export_packets_total"
    }


def fold_events(events: list[dict[str, Any]]) -> dict[tuple[str, ...], dict[str, Any]]:
    """Fold events by detector, source, destination and window.

    One collector groups the findings of every exporter into one event per
    window; two instances (or a process and its workers, batching
    differently) each write their share, and a window that closes while an
    old capture still arrives reopens as a further event. Summing by the
    detection's own key compares what was found, not how it was cut up.
    """
    merged: dict[tuple[str, ...], dict[str, Any]] = defaultdict(
        lambda: {"flows": 0, "packets": 0, "bytes": 0, "observers": set()}
    )
    for event in events:
        found = event["flowtrap"]
        key = (
            event["rule"]["name"],
            event["source"]["ip"],
            event["destination"]["ip"],
            found["window"]["start"],
        )
        into = merged[key]
        for field in ("flows", "packets", "bytes"):
            into[field] += found[field]
        into["observers"] |= set(event["observer"]["ip"])
    return dict(merged)
