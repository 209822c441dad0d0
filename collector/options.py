"""What options records tell about an exporter's flows: sampling and clock.

Options records (RFC 7011 §3.4.2.2, RFC 3954 §6.1) are kept apart from flow
records; the values that change how a flow record reads — the sampling interval
per sampler and the exporter's system init time — are joined to flows here.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from collector.decoder import Batch
from collector.layout import Layout, Row, convert

# One entry per (exporter, observation domain), under 1 kB each.
MAX_DOMAINS = 100_000
# Samplers per domain; exporters define a handful.
MAX_SAMPLERS = 256
# Interface and VRF names per domain; a large router has a few thousand.
MAX_NAMES = 16_384

_SAMPLER_IDS = ("samplerId", "selectorId")
# The elements of a record that say how it was sampled.
SAMPLING_ELEMENTS = (
    "samplingInterval",
    "samplerRandomInterval",
    "samplingPacketInterval",
)


@dataclass(slots=True)
class DomainOptions:
    """Options state of one (exporter, observation domain)."""

    sampling: dict[int, int] = field(default_factory=dict)
    system_init_ms: int | None = None
    interfaces: dict[int, str] = field(default_factory=dict)
    vrfs: dict[int, str] = field(default_factory=dict)


def sampling_interval(values: dict[str, Any]) -> int | None:
    """Return 1-in-N from whichever sampling elements a record carries."""
    for name in ("samplingInterval", "samplerRandomInterval"):
        value = values.get(name)
        if isinstance(value, int) and value > 0:
            return value
    selected = values.get("samplingPacketInterval")
    if isinstance(selected, int) and selected > 0:
        # RFC 5476 §6.5.2: systematic count-based sampling selects `interval`
        # packets then skips `space`.
        space = values.get("samplingPacketSpace")
        space = space if isinstance(space, int) else 0
        return max(1, (selected + space) // selected)
    return None


def sampler_id(layout: Layout, row: Row) -> int:
    """Return the sampler a flow row names, or 0 when it names none."""
    for name in _SAMPLER_IDS:
        index = layout.index.get(name)
        if index is not None:
            value = convert(layout.columns[index], row[index])
            return value if isinstance(value, int) else 0
    return 0


def _name_entry(
    values: dict[str, Any], ids: tuple[str, ...], names: tuple[str, ...]
) -> tuple[int, str] | None:
    """Return (id, name) when an options record names an interface or VRF."""
    number = next((values[n] for n in ids if isinstance(values.get(n), int)), None)
    name = next((values[n] for n in names if isinstance(values.get(n), str)), None)
    if number is None or not name:
        return None
    return number, name


def _put(table: dict[int, Any], key: int, value: Any, cap: int) -> None:
    """Set one entry unless the table is full of other keys."""
    if key in table or len(table) < cap:
        table[key] = value


class OptionsStore:
    """Options state per (exporter, observation domain), bounded."""

    def __init__(self) -> None:
        """Start empty."""
        self._domains: OrderedDict[tuple[str, int], DomainOptions] = OrderedDict()

    def learn(self, batch: Batch) -> None:
        """Take sampling, clock and names from a batch of options records."""
        context = batch.context
        key = (context.exporter, context.domain)
        for row in batch.rows:
            values = batch.layout.values(row)
            interval = sampling_interval(values)
            init = values.get("systemInitTimeMilliseconds")
            interface = _name_entry(
                values,
                ("ingressInterface", "scopeInterface", "egressInterface"),
                ("interfaceName", "interfaceDescription"),
            )
            vrf = _name_entry(values, ("ingressVRFID", "egressVRFID"), ("VRFname",))
            has_init = isinstance(init, int)
            if interval is None and not has_init and not (interface or vrf):
                continue
            domain = self._domain(key)
            if isinstance(init, int):
                domain.system_init_ms = init
            if interval is not None:
                sampler = next(
                    (values[n] for n in _SAMPLER_IDS if isinstance(values.get(n), int)),
                    0,
                )
                _put(domain.sampling, sampler, interval, MAX_SAMPLERS)
            if interface:
                _put(domain.interfaces, interface[0], interface[1], MAX_NAMES)
            if vrf:
                _put(domain.vrfs, vrf[0], vrf[1], MAX_NAMES)

    def get(self, exporter: str, domain: int) -> DomainOptions | None:
        """Return the options state of a domain, if any options arrived."""
        return self._domains.get((exporter, domain))

    def items(self) -> list[tuple[tuple[str, int], DomainOptions]]:
        """Return every (exporter, domain) and its options state."""
        return list(self._domains.items())

    def restore(self, exporter: str, domain: int, state: DomainOptions) -> None:
        """Put back saved options state (at start, from the state file)."""
        self._domains[(exporter, domain)] = state
        if len(self._domains) > MAX_DOMAINS:
            self._domains.popitem(last=False)

    def _domain(self, key: tuple[str, int]) -> DomainOptions:
        """Return (creating, within the cap) the state of one domain."""
        domain = self._domains.get(key)
        if domain is None:
            domain = DomainOptions()
            self._domains[key] = domain
            if len(self._domains) > MAX_DOMAINS:
                self._domains.popitem(last=False)
        return domain
