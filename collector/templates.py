"""Template state per exporter, and data flowsets held until their template comes.

Templates are scoped by (exporter address, version, observation domain id, template
id), RFC 7011 §8 and RFC 3954 §5.1, so two exporters or two domains that reuse a
template id never mix. Every map an exporter can grow is capped; hitting a cap is
counted, never raised.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from collector.layout import Layout
from collector.stats import Stats

log = logging.getLogger(__name__)

TemplateKey = tuple[int, int, int]
"""(version, observation domain id, template id) within one exporter."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on the state that senders can grow."""

    # One exporter's state is a few kB plus its templates and held data.
    max_exporters: int = 10_000
    # A layout costs about 2 kB; real exporters define tens, not hundreds.
    max_templates_per_exporter: int = 256
    # Held flowsets cost their size; Juniper and pmacct restarts need a few.
    held_flowsets_per_exporter: int = 64
    held_bytes_per_exporter: int = 256 * 1024
    held_bytes_total: int = 32 * 1024 * 1024
    held_max_age: float = 600.0
    # Templates not sent again within this many seconds expire (0: never).
    # Exporters refresh every few minutes; pmacct only at start, hence long.
    template_max_age: float = 4 * 3600.0
    # Include the exporter's UDP source port in the template scope (RFC 7011 §8.4);
    # off by default because exporters change port when they restart.
    scope_by_port: bool = False


@dataclass(frozen=True, slots=True)
class ExportContext:
    """What the export packet header says about the records inside it."""

    exporter: str
    port: int
    version: int
    domain: int
    export_time_ms: int
    sys_uptime: int | None
    sequence: int
    received: float
    # NetFlow v5 carries its sampling interval in the header; 0 when not sent.
    sampling_interval: int = 0


@dataclass(frozen=True, slots=True)
class Held:
    """A data flowset waiting for its template."""

    key: TemplateKey
    body: bytes
    context: ExportContext


@dataclass(slots=True)
class ExporterState:
    """The templates and held data of one exporter."""

    address: str = ""
    templates: dict[TemplateKey, Layout] = field(default_factory=dict)
    # When each template was last sent, by the clock of the packet that sent it.
    refreshed: dict[TemplateKey, float] = field(default_factory=dict)
    held: deque[Held] = field(default_factory=deque)
    held_bytes: int = 0


class TemplateStore:
    """Templates and held data for every exporter, within fixed limits."""

    def __init__(self, limits: Limits, stats: Stats) -> None:
        """Start empty; no I/O."""
        self.limits = limits
        self.stats = stats
        self._exporters: OrderedDict[tuple[str, int], ExporterState] = OrderedDict()
        self._held_total = 0

    def exporter(self, address: str, port: int) -> ExporterState | None:
        """Return an exporter's state, creating it while under the exporter cap."""
        key = (address, port if self.limits.scope_by_port else 0)
        state = self._exporters.get(key)
        if state is not None:
            return state
        if len(self._exporters) >= self.limits.max_exporters:
            self.stats.error(address, "exporter_limit")
            return None
        state = ExporterState(address=address)
        self._exporters[key] = state
        self.stats.add("exporters")
        log.info("new exporter", extra={"exporter": address})
        return state

    def learn(
        self, state: ExporterState, key: TemplateKey, layout: Layout, now: float
    ) -> bool:
        """Store a template; return False when the per-exporter cap refuses it."""
        old = state.templates.get(key)
        if (
            old is None
            and len(state.templates) >= self.limits.max_templates_per_exporter
        ):
            self.stats.error(state.address, "template_limit")
            return False
        if old is None:
            self.stats.add("templates_learned")
            log.debug(
                "template learned",
                extra={"exporter": state.address, "template": key},
            )
        elif old.fields != layout.fields or old.options != layout.options:
            self.stats.add("templates_changed")
            log.info(
                "template changed",
                extra={"exporter": state.address, "template": key},
            )
        else:
            # A refresh of the same template keeps the compiled layout (and
            # anything cached on it).
            layout = old
        state.templates[key] = layout
        state.refreshed[key] = now
        return True

    def expire_templates(self, now: float) -> int:
        """Drop templates not refreshed within the age limit; return how many."""
        max_age = self.limits.template_max_age
        if max_age <= 0:
            return 0
        horizon = now - max_age
        expired = 0
        for state in self._exporters.values():
            stale = [key for key, seen in state.refreshed.items() if seen < horizon]
            for key in stale:
                del state.templates[key]
                del state.refreshed[key]
            expired += len(stale)
        if expired:
            self.stats.add("templates_expired", expired)
            log.info("templates expired", extra={"count": expired})
        return expired

    def exporters(self) -> list[tuple[str, int, ExporterState]]:
        """Return every exporter's address, scope port and state."""
        return [(addr, port, state) for (addr, port), state in self._exporters.items()]

    def withdraw(self, state: ExporterState, key: TemplateKey, exporter: str) -> None:
        """Remove one template (RFC 7011 §8.1); an unknown one is only counted."""
        state.refreshed.pop(key, None)
        if state.templates.pop(key, None) is None:
            self.stats.error(exporter, "withdraw_unknown_template")
        else:
            self.stats.add("templates_withdrawn")

    def withdraw_all(
        self, state: ExporterState, version: int, domain: int, options: bool
    ) -> None:
        """Remove every data (or options) template of one observation domain."""
        doomed = [
            key
            for key, layout in state.templates.items()
            if key[0] == version and key[1] == domain and layout.options == options
        ]
        for key in doomed:
            del state.templates[key]
            state.refreshed.pop(key, None)
        self.stats.add("templates_withdrawn", len(doomed))

    def hold(self, state: ExporterState, held: Held, now: float) -> None:
        """Keep a data flowset whose template has not arrived, within the caps."""
        self.expire_held(state, now)
        size = len(held.body)
        limits = self.limits
        while state.held and (
            len(state.held) >= limits.held_flowsets_per_exporter
            or state.held_bytes + size > limits.held_bytes_per_exporter
            or self._held_total + size > limits.held_bytes_total
        ):
            self._drop_oldest(state, "held_dropped_cap", held.context.exporter)
        if (
            size > limits.held_bytes_per_exporter
            or self._held_total + size > limits.held_bytes_total
        ):
            self.stats.error(held.context.exporter, "held_dropped_cap")
            return
        state.held.append(held)
        state.held_bytes += size
        self._held_total += size
        self.stats.add("flowsets_held")

    def release(self, state: ExporterState, key: TemplateKey) -> list[Held]:
        """Take out the held flowsets that the template under key can now decode."""
        if not state.held:
            return []
        ready = [held for held in state.held if held.key == key]
        if ready:
            state.held = deque(held for held in state.held if held.key != key)
            freed = sum(len(held.body) for held in ready)
            state.held_bytes -= freed
            self._held_total -= freed
        return ready

    def expire_held(self, state: ExporterState, now: float) -> None:
        """Drop held flowsets older than the age limit."""
        horizon = now - self.limits.held_max_age
        while state.held and state.held[0].context.received < horizon:
            self._drop_oldest(state, "held_expired", state.held[0].context.exporter)

    def expire(self, now: float) -> None:
        """Expire held data and stale templates of every exporter."""
        for state in self._exporters.values():
            self.expire_held(state, now)
        self.expire_templates(now)

    def drain_held(self) -> int:
        """Drop every held flowset (at shutdown), returning how many there were."""
        dropped = 0
        for state in self._exporters.values():
            while state.held:
                self._drop_oldest(
                    state, "held_never_decoded", state.held[0].context.exporter
                )
                dropped += 1
        return dropped

    def _drop_oldest(self, state: ExporterState, reason: str, exporter: str) -> None:
        """Drop the oldest held flowset of one exporter, counting why."""
        held = state.held.popleft()
        state.held_bytes -= len(held.body)
        self._held_total -= len(held.body)
        self.stats.error(exporter, reason)
