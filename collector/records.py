"""Building full flow records from decoded rows, with times made absolute UTC."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from collector.layout import Layout, Row
from collector.options import (
    SAMPLING_ELEMENTS,
    DomainOptions,
    sampler_id,
    sampling_interval,
)
from collector.templates import ExportContext
from schemas.flow import FlowRecord

_UPTIME_WRAP = 1 << 32
# No flow time is believed past 2100-01-01, whatever the tolerance.
_LATEST_MS = 4_102_444_800_000
_NTP_TO_UNIX_MS = 2_208_988_800_000


@dataclass(frozen=True, slots=True)
class TimeRules:
    """How far a flow time may stray from its export time and still be believed."""

    tolerance_ms: int = 86_400_000


def _uptime_to_ms(uptime_at: int, context: ExportContext) -> int | None:
    """Turn a sysUptime stamp into epoch ms using the header's uptime and time.

    The difference is taken modulo 2**32 so that the 49.7-day wrap of the
    32-bit uptime between flow start and export is handled (RFC 3954 §5.1).
    """
    if context.sys_uptime is None:
        return None
    elapsed = (context.sys_uptime - uptime_at) % _UPTIME_WRAP
    if elapsed >= _UPTIME_WRAP // 2:
        # A stamp slightly after the header uptime: the flow ended "in the
        # future" by a little, not 49 days ago.
        elapsed -= _UPTIME_WRAP
    return context.export_time_ms - elapsed


def _ntp_to_ms(value: int, nanoseconds: bool) -> int:
    """Turn a 64-bit NTP timestamp (RFC 7011 §6.1.9-10) into epoch ms."""
    seconds = value >> 32
    fraction = value & 0xFFFFFFFF
    if not nanoseconds:
        # dateTimeMicroseconds ignores the low 11 bits of the fraction.
        fraction &= 0xFFFFF800
    return seconds * 1000 + (fraction * 1000 >> 32) - _NTP_TO_UNIX_MS


def _stamp(
    values: dict[str, Any],
    edge: str,
    context: ExportContext,
    system_init_ms: int | None,
) -> int | None:
    """Return one edge ("Start" or "End") of a flow in epoch ms, or None."""
    value = values.get(f"flow{edge}Milliseconds")
    if isinstance(value, int):
        return value
    value = values.get(f"flow{edge}Seconds")
    if isinstance(value, int):
        return value * 1000
    value = values.get(f"flow{edge}Microseconds")
    if isinstance(value, int):
        return _ntp_to_ms(value, False)
    value = values.get(f"flow{edge}Nanoseconds")
    if isinstance(value, int):
        return _ntp_to_ms(value, True)
    value = values.get(f"flow{edge}DeltaMicroseconds")
    if isinstance(value, int):
        # RFC 7011 §6.1: deltas count back from the export time.
        return context.export_time_ms - value // 1000
    value = values.get(f"flow{edge}SysUpTime")
    if isinstance(value, int):
        init = values.get("systemInitTimeMilliseconds", system_init_ms)
        if isinstance(init, int):
            return init + value
        return _uptime_to_ms(value, context)
    return None


def _observed(values: dict[str, Any]) -> int | None:
    """Return the observation (event) time in epoch ms, if the record has one."""
    value = values.get("observationTimeMilliseconds")
    if isinstance(value, int):
        return value
    value = values.get("observationTimeSeconds")
    return value * 1000 if isinstance(value, int) else None


def flow_times(
    values: dict[str, Any], context: ExportContext, system_init_ms: int | None = None
) -> tuple[int, int] | None:
    """Return (start, end) in epoch ms from whichever time encodings are present.

    Start and end may use different encodings. Firewalls that report events
    rather than flows (Cisco ASA NSEL) send a start and an event time only: the
    event time then stands for the end.
    """
    start = _stamp(values, "Start", context, system_init_ms)
    end = _stamp(values, "End", context, system_init_ms)
    if end is None:
        end = _observed(values)
    if start is None:
        start = end
    if start is None:
        return None
    return start, end if end is not None else start


@dataclass(frozen=True, slots=True)
class _Plan:
    """Which of a layout's fields fill each part of a flow record.

    Each part lists, in order of preference, the element names the layout
    has; resolved once per layout, so a record reads its values directly.
    """

    # Addresses: the row position of each field's packed bytes, and their size.
    src: tuple[tuple[int, int], ...]
    dst: tuple[tuple[int, int], ...]
    next_hop: tuple[tuple[int, int], ...]
    src_port: tuple[str, ...]
    dst_port: tuple[str, ...]
    protocol: tuple[str, ...]
    packets: tuple[str, ...]
    octets: tuple[str, ...]
    tcp_flags: tuple[str, ...]
    input: tuple[str, ...]
    output: tuple[str, ...]
    vrf: tuple[str, ...]
    padding: tuple[str, ...]
    sampled: bool

    @classmethod
    def of(cls, layout: Layout) -> _Plan:
        """Return the plan of a layout, resolving it on first use."""
        cached = layout.cache.get("plan")
        if isinstance(cached, _Plan):
            return cached

        def present(*names: str) -> tuple[str, ...]:
            return tuple(name for name in names if name in layout.index)

        def addresses(v4: str, v6: str) -> tuple[tuple[int, int], ...]:
            sizes = {v4: 4, v6: 16}
            return tuple((layout.index[name], sizes[name]) for name in present(v4, v6))

        plan = cls(
            src=addresses("sourceIPv4Address", "sourceIPv6Address"),
            dst=addresses("destinationIPv4Address", "destinationIPv6Address"),
            next_hop=addresses("ipNextHopIPv4Address", "ipNextHopIPv6Address"),
            src_port=present("sourceTransportPort"),
            dst_port=present("destinationTransportPort"),
            protocol=present("protocolIdentifier"),
            packets=present("packetDeltaCount", "packetTotalCount", "initiatorPackets"),
            octets=present("octetDeltaCount", "octetTotalCount", "initiatorOctets"),
            tcp_flags=present("tcpControlBits"),
            input=present("ingressInterface"),
            output=present("egressInterface"),
            vrf=present("ingressVRFID", "egressVRFID"),
            padding=present("paddingOctets", "paddingOctets#2"),
            sampled=bool(present(*SAMPLING_ELEMENTS)),
        )
        layout.cache["plan"] = plan
        return plan


def _int(values: dict[str, Any], names: tuple[str, ...]) -> int | None:
    """Return the first present field when it decoded to an integer."""
    for name in names:
        value = values[name]
        return value if isinstance(value, int) else None
    return None


def _address(
    row: Row, fields: tuple[tuple[int, int], ...]
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Return the first of several address fields sent at its address's size.

    Templates that carry both IPv4 and IPv6 fields fill the family a flow does
    not use with zeros: an all-zero address gives way to a later one that is
    not. Read from the packed bytes: parsing the dotted text instead cost a few
    microseconds for every address not seen before.
    """
    unspecified = None
    for position, size in fields:
        value = row[position]
        if isinstance(value, bytes) and len(value) == size:
            if value != _ZEROS[size]:
                return _packed_address(value)
            if unspecified is None:
                unspecified = value
    return None if unspecified is None else _packed_address(unspecified)


_ZEROS = {4: bytes(4), 16: bytes(16)}


# Flows repeat the same few addresses.
_packed_address = lru_cache(maxsize=65_536)(ipaddress.ip_address)
_parse_address = lru_cache(maxsize=4_096)(ipaddress.ip_address)


def _datetime(epoch_ms: int) -> datetime:
    """Turn epoch ms into an aware UTC datetime (clamped to what datetime holds)."""
    return datetime.fromtimestamp(min(max(epoch_ms, 0), _LATEST_MS) / 1000, UTC)


def build_flow(
    layout: Layout,
    row: Row,
    context: ExportContext,
    options: DomainOptions | None = None,
    rules: TimeRules = TimeRules(),
) -> FlowRecord:
    """Build the full flow record for one decoded row."""
    plan = _Plan.of(layout)
    values = layout.values(row)
    for name in plan.padding:
        del values[name]

    export_ms = context.export_time_ms
    # Nothing may claim to lie further ahead of its arrival than the tolerance:
    # a window placed in the future would wait there until shutdown. (The past
    # is allowed: a replay's export packets arrive long after they were sent.)
    # An arrival time of 0 means none is known (bytes decoded outside a listener
    # or capture), and then nothing is compared with it.
    arrival_limit = (
        int(context.received * 1000) + rules.tolerance_ms
        if context.received > 0
        else _LATEST_MS
    )
    if export_ms > arrival_limit:
        export_ms = min(int(context.received * 1000), _LATEST_MS)
    times = flow_times(values, context, options.system_init_ms if options else None)
    trusted = times is not None and (
        abs(times[0] - export_ms) <= rules.tolerance_ms
        and abs(times[1] - export_ms) <= rules.tolerance_ms
        and min(_LATEST_MS, arrival_limit) >= times[1] >= times[0] >= 0
    )
    start_ms, end_ms = (
        times if times is not None and trusted else (export_ms, export_ms)
    )

    # The record's own sampling elements win, then its sampler's options
    # record, then the v5 header.
    sampling = sampling_interval(values) if plan.sampled else None
    if sampling is None and options is not None:
        sampling = options.sampling.get(sampler_id(layout, row))
    if sampling is None and context.sampling_interval:
        sampling = context.sampling_interval

    input_interface = _int(values, plan.input)
    output_interface = _int(values, plan.output)
    if options is not None:
        names = options.interfaces
        vrf = _int(values, plan.vrf)
        input_name = names.get(input_interface) if input_interface else None
        output_name = names.get(output_interface) if output_interface else None
        vrf_name = options.vrfs.get(vrf) if vrf is not None else None
    else:
        input_name = output_name = vrf_name = None
    export_time = _datetime(export_ms)
    start = export_time if start_ms == export_ms else _datetime(start_ms)
    end = start if end_ms == start_ms else _datetime(end_ms)

    # Every value here is already of its field's type, built by this module
    # from bounds-checked decoder output, so pydantic's validation is skipped
    # (it was a third of the cost of a record).
    return _construct(
        {
            "exporter": _parse_address(context.exporter),
            "exporter_port": context.port,
            "version": context.version,
            "observation_domain_id": context.domain,
            "template_id": layout.template_id or None,
            "src_addr": _address(row, plan.src),
            "dst_addr": _address(row, plan.dst),
            "src_port": _int(values, plan.src_port),
            "dst_port": _int(values, plan.dst_port),
            "protocol": _int(values, plan.protocol),
            "packets": _int(values, plan.packets),
            "bytes": _int(values, plan.octets),
            "start": start,
            "end": end,
            "time_trusted": trusted,
            "tcp_flags": _int(values, plan.tcp_flags),
            "input_interface": input_interface,
            "output_interface": output_interface,
            "input_interface_name": input_name,
            "output_interface_name": output_name,
            "vrf_name": vrf_name,
            "next_hop": _address(row, plan.next_hop),
            "sampling_interval": sampling,
            "export_time": export_time,
            "fields": values,
        }
    )


_FIELD_NAMES = frozenset(FlowRecord.model_fields)


def _construct(values: dict[str, Any]) -> FlowRecord:
    """Make a flow record from values of every field, without validation.

    This is what ``model_construct`` makes for a model without aliases,
    extras, private attributes or post-init hooks (FlowRecord has none;
    tests/test_records.py checks both agree), minus its per-field alias walk,
    which cost a third of building a record.
    """
    record = FlowRecord.__new__(FlowRecord)
    object.__setattr__(record, "__dict__", values)
    object.__setattr__(record, "__pydantic_fields_set__", set(_FIELD_NAMES))
    object.__setattr__(record, "__pydantic_extra__", None)
    object.__setattr__(record, "__pydantic_private__", None)
    return record
