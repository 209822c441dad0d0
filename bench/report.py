"""The benchmark report: Markdown tables, ratios taken within the one run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.profile import key_functions

if TYPE_CHECKING:
    from bench.__main__ import Results
    from bench.burst import BurstResult
    from bench.decode import DecodeResult
    from bench.live import Sweep
    from bench.memory import MemoryResult
    from bench.profile import Profile

VERSION = {5: "v5", 9: "v9", 10: "IPFIX"}
# Issue 6's goals.
GOAL_RECORDS = 2_000_000
GOAL_RSS_MB = 200.0
PEERS = ("nfcapd", "nfacctd")


def _n(value: float) -> str:
    """Format a count with thousands separators."""
    return f"{value:,.0f}"


def _ratio(top: float, bottom: float) -> str:
    """Format top / bottom, or a dash when bottom is zero."""
    return f"{top / bottom:.2f}x" if bottom else "-"


def decode_line(result: DecodeResult) -> str:
    """Return one line of decode rates for progress output."""
    return ", ".join(f"{name} {_n(rate)}/s" for name, rate in result.rates.items())


def _decode(results: list[DecodeResult]) -> list[str]:
    """Return the decode + detect table."""
    lines = [
        "### Decode + detect, one core, in process (flow records/s, best round)",
        "",
        "| version | layouts | records/packet | flowtrap decode+detect "
        "| flowtrap decode only | `netflow` pkg decode+test | `iter_unpack` alone "
        "| flowtrap / `netflow` | flowtrap / `iter_unpack` | goal 2,000,000 "
        "| decode+detect, no UDP/631 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        flowtrap = r.rates.get("flowtrap", 0.0)
        netflow = r.rates.get("netflow pkg", 0.0)
        ceiling = r.rates.get("iter_unpack", 0.0)
        netflow_text = _n(netflow) if netflow else "cannot decode"
        if netflow and r.netflow_layouts < r.layouts:
            netflow_text += f" ({r.netflow_layouts} of {r.layouts} layouts)"
        goal = "met" if flowtrap >= GOAL_RECORDS else f"{flowtrap / GOAL_RECORDS:.0%}"
        clean = r.rates.get("flowtrap, no UDP/631", 0.0)
        clean_text = "not run"
        if clean:
            met = "met" if clean >= GOAL_RECORDS else f"{clean / GOAL_RECORDS:.0%}"
            clean_text = f"{_n(clean)} ({met})"
        lines.append(
            f"| {VERSION[r.version]} | {r.layouts} | {r.records_per_packet:.1f} "
            f"| {_n(flowtrap)} | {_n(r.rates.get('decode only', 0.0))} "
            f"| {netflow_text} | {_n(ceiling)} | {_ratio(flowtrap, netflow)} "
            f"| {_ratio(flowtrap, ceiling)} | {goal} | {clean_text} |"
        )
    checks = [
        f"{VERSION[r.version]} {r.findings_seen}/{r.findings_expected}" for r in results
    ]
    lines += [
        "",
        "Findings per pass over the pool, seen/expected: " + ", ".join(checks),
    ]
    return lines


def _held(sweep: Sweep, name: str, records: float) -> str:
    """Format the highest rate a collector held, in datagrams and records."""
    rate = sweep.held.get(name)
    if rate is None:
        return "not run"
    text = f"{_n(rate)} ({_n(rate * records)} rec/s)" if rate else "under 2,500"
    note = sweep.note.get(name)
    return f"{text} [{note}]" if note else text


def _live(sweeps: list[Sweep], steps: bool) -> list[str]:
    """Return the live ingest table, and every step when asked."""
    lines = [
        "### Live ingest: highest rate held with under 0.1 % loss (datagrams/s)",
        "",
        "| version | traffic | flowtrap run | nfcapd | nfacctd | flowtrap / nfcapd "
        "| flowtrap / nfacctd |",
        "|---|---|---|---|---|---|---|",
    ]
    for sweep in sweeps:
        per = sweep.records_per_datagram
        flowtrap = sweep.held.get("flowtrap", 0.0)
        peers = [sweep.held.get(name, 0.0) for name in PEERS]
        lines.append(
            f"| {VERSION[sweep.version]} | {sweep.traffic} "
            f"| {_held(sweep, 'flowtrap', per)} "
            f"| {_held(sweep, 'nfcapd', per)} | {_held(sweep, 'nfacctd', per)} "
            f"| {_ratio(flowtrap, peers[0])} | {_ratio(flowtrap, peers[1])} |"
        )
    if not steps:
        return lines
    lines += [
        "",
        "Every step (rate asked, rate sent, loss, kernel drops on the socket):",
    ]
    lines += [
        "",
        "| version | traffic | collector | asked/s | sent/s | loss | socket drops |",
    ]
    lines += ["|---|---|---|---|---|---|---|"]
    for sweep in sweeps:
        for s in sweep.steps:
            loss = f"{s.loss:.3%}" if not s.error else f"error: {s.error}"
            lines.append(
                f"| {VERSION[sweep.version]} | {sweep.traffic} | {s.collector} "
                f"| {_n(s.rate)} "
                f"| {_n(s.sent_rate)} | {loss} | {_n(s.socket_drops)} |"
            )
    return lines


def _workers(workers: Sweep | str | None) -> list[str]:
    """Return the --workers section."""
    lines = ["### `--workers` scaling (v9)", ""]
    if workers is None:
        return [*lines, "Not run."]
    if isinstance(workers, str):
        return [*lines, workers[:1].upper() + workers[1:] + "."]
    for name, rate in workers.held.items():
        lines.append(f"- {name}: {_n(rate)} datagrams/s held")
    lines.append("- the sender shares the two cores with the workers")
    return lines


def _cluster(cluster: Sweep | str | None) -> list[str]:
    """Return the cluster section: one node against two."""
    lines = ["### Cluster: one `--cluster` node against two (v9, NATS JetStream)", ""]
    if cluster is None:
        return [*lines, "Not run."]
    if isinstance(cluster, str):
        return [*lines, cluster[:1].upper() + cluster[1:] + "."]
    lines += [
        "| nodes | highest rate held (datagrams/s) | records/s | against one node |",
        "|---|---|---|---|",
    ]
    rates = list(cluster.held.values())
    one = rates[0] if rates else 0.0
    for name, rate in cluster.held.items():
        note = cluster.note.get(name, "")
        lines.append(
            f"| {name} | {_n(rate)} | {_n(rate * cluster.records_per_datagram)} "
            f"| {_ratio(rate, one)}{' (' + note + ')' if note else ''} |"
        )
    lines += [
        "",
        "Each exporter sends to one node, as a load balancer hashing exporters "
        "would; the nodes share what their detectors wanted through a local "
        "nats-server. One node runs on the collectors' core; the second node "
        "runs on the sender's core, so on a two-core machine it competes with "
        "the sender.",
    ]
    return lines


def _memory(result: MemoryResult | str | None) -> list[str]:
    """Return the memory section."""
    lines = ["### Memory (`flowtrap run`, RSS from /proc)", ""]
    if result is None:
        return [*lines, "Not run."]
    if isinstance(result, str):
        return [*lines, result]
    goal = "met" if result.peak_rss_mb < GOAL_RSS_MB else "NOT met"
    received = result.datagrams_received
    lines += [
        "| exporters | templates | held flowsets sent | held caps reached "
        "| datagrams received/sent | idle RSS | RSS after | peak RSS | goal 200 MB |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {_n(result.exporters)} | {_n(result.templates)} "
        f"| {_n(result.held_sent)} | {'yes' if result.held_capped else 'no'} "
        f"| {_n(received or 0)}/{_n(result.datagrams_sent)} "
        f"| {result.idle_rss_mb:.0f} MB | {result.rss_mb:.0f} MB "
        f"| {result.peak_rss_mb:.0f} MB | {goal} |",
    ]
    return lines


def _burst(result: BurstResult | str | None) -> list[str]:
    """Return the events-burst section."""
    lines = ["### Events: a burst of findings under load (v9)", ""]
    if result is None:
        return [*lines, "Not run."]
    if isinstance(result, str):
        return [*lines, f"Failed: {result}"]
    lines += [
        "| run | datagrams/s | records lost | findings sent | in events "
        "| events written | events dropped by outputs | run time | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, run in (("baseline", result.baseline), ("burst", result.burst)):
        lines.append(
            f"| {label} | {_n(run.rate)} | {run.loss:.3%} | {_n(run.findings_sent)} "
            f"| {_n(run.flows_in_events)} | {_n(run.events)} "
            f"| {'-' if run.dropped_events is None else _n(run.dropped_events)} "
            f"| {run.seconds:.1f} s | {run.peak_rss_mb:.0f} MB |"
        )
    ok = (
        result.burst.flows_in_events == result.burst.findings_sent
        and result.burst.loss <= max(result.baseline.loss, 0.001)
    )
    lines += [
        "",
        f"Goal (no finding lost, ingest unharmed): {'met' if ok else 'NOT met'}",
    ]
    return lines


def _profile(found: Profile | None, pyinstrument: str) -> list[str]:
    """Return the profile section: own time and time under the key functions."""
    lines = ["### Where the time goes (py-spy on `flowtrap run`, saturated, v9)", ""]
    if found is None:
        return [*lines, "Not run."]
    if found.error:
        return [*lines, found.error]
    total = max(1, found.samples)
    lines += ["| function (own time) | share |", "|---|---|"]
    for name, count in list(found.own.items())[:12]:
        lines.append(f"| `{name}` | {count / total:.1%} |")
    lines += ["", "| under (inclusive) | share |", "|---|---|"]
    shown: list[tuple[str, int]] = []
    for wanted in key_functions():
        for name, count in found.under.items():
            function = name.rpartition(":")[2]
            if function == wanted or function.endswith("." + wanted):
                shown.append((name, count))
    for name, count in sorted(set(shown), key=lambda item: -item[1])[:12]:
        lines.append(f"| `{name}` | {count / total:.1%} |")
    lines += ["", f"{total:,} samples. In-process call tree: {pyinstrument}"]
    return lines


def render(results: Results, steps: bool = True) -> str:
    """Return the whole report as Markdown; without the sweep's steps if asked."""
    meta: dict[str, Any] = results.meta
    lines = [
        f"Measured with `{meta.get('command')}` on {meta.get('date')}, tree "
        f"{meta.get('tree')}, {meta.get('cores')} cores ({meta.get('cpu')}), "
        f"Python {meta.get('python')}, net.core.rmem_max {meta.get('rmem_max')}; "
        f"layouts: {meta.get('layouts')}; {meta.get('minutes')} min.",
        "",
    ]
    if results.decode:
        lines += [*_decode(results.decode), ""]
    if results.sweeps:
        lines += [*_live(results.sweeps, steps), ""]
    lines += [*_workers(results.workers), ""]
    lines += [*_cluster(results.cluster), ""]
    lines += [*_memory(results.memory), ""]
    lines += [*_burst(results.burst), ""]
    lines += [*_profile(results.profile, results.pyinstrument), ""]
    return "\n".join(lines)
