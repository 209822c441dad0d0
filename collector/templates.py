"""Template state per exporter, and data flowsets held until their template comes.

Templates are scoped by (exporter address, version, observation domain id, template
id), RFC 7011 §8 and RFC 3954 §5.1, so two exporters or two domains that reuse a
template id never mix. Every map an exporter can grow is capped; hitting a cap is
counted, never raised.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from collector.layout import FieldSpec, Layout
from collector.ratelimit import RateLimit
from collector.stats import Stats

log = logging.getLogger(__name__)

# How many of the least recent exporters are looked at to make room for a new one.
_EVICTION_SCAN = 64

TemplateKey = tuple[int, int, int]
"""(version, observation domain id, template id) within one exporter."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on the state that senders can grow."""

    # One exporter's state is a few kB plus its templates and held data.
    max_exporters: int = 10_000
    # Real exporters define tens of templates, not hundreds.
    max_templates_per_exporter: int = 256
    # A compiled template costs about 60 bytes a field: these bound the memory
    # templates can take (1,000,000 fields is about 60 MB).
    max_template_fields_per_exporter: int = 8_192
    max_template_fields_total: int = 1_000_000
    # Template changes (not refreshes) each cost a compile; an exporter gets this
    # many a second on average, in bursts of up to template_change_burst.
    template_changes_per_second: float = 20.0
    template_change_burst: float = 200.0
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
    last_seen: float = 0.0
    fields: int = 0
    # Token bucket for template changes (see Limits.template_changes_per_second).
    change_tokens: float = -1.0
    change_time: float = 0.0


class TemplateStore:
    """Templates and held data for every exporter, within fixed limits."""

    def __init__(self, limits: Limits, stats: Stats) -> None:
        """Start empty; no I/O."""
        self.limits = limits
        self.stats = stats
        self._exporters: OrderedDict[tuple[str, int], ExporterState] = OrderedDict()
        self._held_total = 0
        self._fields_total = 0
        self._change_logs = RateLimit(per_minute=6)

    def exporter(
        self, address: str, port: int, now: float = 0.0
    ) -> ExporterState | None:
        """Return an exporter's state, creating it while under the exporter cap."""
        key = (address, port if self.limits.scope_by_port else 0)
        state = self._exporters.get(key)
        if state is not None:
            state.last_seen = now
            self._exporters.move_to_end(key)
            return state
        if len(self._exporters) >= self.limits.max_exporters and not self._evict(now):
            self.stats.error(address, "exporter_limit")
            return None
        state = ExporterState(address=address, last_seen=now)
        self._exporters[key] = state
        self.stats.add("exporters")
        log.info("new exporter", extra={"exporter": address})
        return state

    def _evict(self, now: float) -> bool:
        """Make room by forgetting one of the least recent exporters.

        One that holds nothing goes first; one whose templates have not been
        used for held_max_age goes next (a real exporter sends every few
        seconds; a spoofed source sent once). An exporter active within that
        time is never pushed out. Only the oldest few are looked at, so a flood
        of new sources costs little.
        """
        horizon = now - self.limits.held_max_age
        victim = None
        for key, state in itertools.islice(self._exporters.items(), _EVICTION_SCAN):
            if not state.templates and not state.held:
                victim = key
                break
            if victim is None and state.last_seen < horizon:
                victim = key
        if victim is None:
            return False
        state = self._exporters.pop(victim)
        for template in list(state.templates):
            self._forget(state, template)
        while state.held:
            self._drop_oldest(state, "held_evicted", state.address)
        self.stats.add("exporters_evicted")
        return True

    def refresh(
        self,
        state: ExporterState,
        key: TemplateKey,
        fields: tuple[FieldSpec, ...],
        options: bool,
        now: float,
    ) -> bool:
        """Note a template resent unchanged; return False if it is new or changed."""
        old = state.templates.get(key)
        if old is None or old.fields != fields or old.options != options:
            return False
        state.refreshed[key] = now
        return True

    def may_change(
        self, state: ExporterState, key: TemplateKey, field_count: int, now: float
    ) -> bool:
        """Check the caps a new or changed template must pass before compiling."""
        limits = self.limits
        old = state.templates.get(key)
        old_fields = len(old.fields) if old is not None else 0
        if old is None and len(state.templates) >= limits.max_templates_per_exporter:
            self.stats.error(state.address, "template_limit")
            return False
        growth = field_count - old_fields
        if (
            state.fields + growth > limits.max_template_fields_per_exporter
            or self._fields_total + growth > limits.max_template_fields_total
        ):
            self.stats.error(state.address, "template_fields_limit")
            return False
        if old is None:
            # A new template is bounded by the template and field caps; only
            # redefinitions (which recompile again and again) are rate limited.
            return True
        if state.change_tokens < 0:
            state.change_tokens = limits.template_change_burst
        else:
            elapsed = max(0.0, now - state.change_time)
            state.change_tokens = min(
                limits.template_change_burst,
                state.change_tokens + elapsed * limits.template_changes_per_second,
            )
        state.change_time = now
        if state.change_tokens < 1:
            self.stats.error(state.address, "template_change_rate")
            return False
        state.change_tokens -= 1
        return True

    def learn(
        self, state: ExporterState, key: TemplateKey, layout: Layout, now: float
    ) -> bool:
        """Store a new or changed template (the caller checked may_change)."""
        old = state.templates.get(key)
        growth = len(layout.fields) - (len(old.fields) if old is not None else 0)
        if old is None:
            self.stats.add("templates_learned")
            log.debug(
                "template learned", extra={"exporter": state.address, "template": key}
            )
        elif old.fields != layout.fields or old.options != layout.options:
            self.stats.add("templates_changed")
            if self._change_logs.allow(state.address):
                log.info(
                    "template changed",
                    extra={"exporter": state.address, "template": key},
                )
        state.templates[key] = layout
        state.refreshed[key] = now
        state.fields += growth
        self._fields_total += growth
        return True

    def _forget(self, state: ExporterState, key: TemplateKey) -> Layout | None:
        """Remove one template and its accounting; return it if it existed."""
        layout = state.templates.pop(key, None)
        state.refreshed.pop(key, None)
        if layout is not None:
            state.fields -= len(layout.fields)
            self._fields_total -= len(layout.fields)
        return layout

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
                self._forget(state, key)
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
        if self._forget(state, key) is None:
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
            self._forget(state, key)
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
        # Exporters are kept least recent first: forget the silent ones that
        # no longer hold anything, so that their slots are free again.
        horizon = now - self.limits.held_max_age
        for key, state in list(self._exporters.items()):
            if state.last_seen >= horizon:
                break
            if not state.templates and not state.held:
                del self._exporters[key]
                self.stats.add("exporters_expired")

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
