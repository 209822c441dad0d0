"""Building full flow records from decoded rows, with times made absolute UTC."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from collector.layout import Layout, Row
from collector.options import DomainOptions, sampler_id, sampling_interval
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


def _first(values: dict[str, Any], *names: str) -> Any:
    """Return the first of several fields that is present."""
    for name in names:
        value = values.get(name)
        if value is not None:
            return value
    return None


def _int(values: dict[str, Any], *names: str) -> int | None:
    """Return the first of several fields that decoded to an integer."""
    value = _first(values, *names)
    return value if isinstance(value, int) else None


def _address(
    values: dict[str, Any], *names: str
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Return the first of several fields that decoded to an IP address."""
    for name in names:
        value = values.get(name)
        if isinstance(value, str):
            try:
                return _parse_address(value)
            except ValueError:
                continue
    return None


# Flows repeat the same few addresses; parsing one costs microseconds.
_parse_address = lru_cache(maxsize=65_536)(ipaddress.ip_address)


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
    values = layout.values(row)
    values.pop("paddingOctets", None)
    values.pop("paddingOctets#2", None)

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
    sampling = sampling_interval(values)
    if sampling is None and options is not None:
        sampling = options.sampling.get(sampler_id(layout, row))
    if sampling is None and context.sampling_interval:
        sampling = context.sampling_interval

    input_interface = _int(values, "ingressInterface")
    output_interface = _int(values, "egressInterface")
    vrf = _int(values, "ingressVRFID", "egressVRFID")
    names = options.interfaces if options is not None else {}
    vrfs = options.vrfs if options is not None else {}

    # Every value here is already of its field's type, built by this module
    # from bounds-checked decoder output, so pydantic's validation is skipped
    # (it was a third of the cost of a record).
    return FlowRecord.model_construct(
        exporter=_parse_address(context.exporter),
        exporter_port=context.port,
        version=context.version,
        observation_domain_id=context.domain,
        template_id=layout.template_id or None,
        src_addr=_address(values, "sourceIPv4Address", "sourceIPv6Address"),
        dst_addr=_address(values, "destinationIPv4Address", "destinationIPv6Address"),
        src_port=_int(values, "sourceTransportPort"),
        dst_port=_int(values, "destinationTransportPort"),
        protocol=_int(values, "protocolIdentifier"),
        packets=_int(
            values, "packetDeltaCount", "packetTotalCount", "initiatorPackets"
        ),
        bytes=_int(values, "octetDeltaCount", "octetTotalCount", "initiatorOctets"),
        start=_datetime(start_ms),
        end=_datetime(end_ms),
        time_trusted=trusted,
        tcp_flags=_int(values, "tcpControlBits"),
        input_interface=input_interface,
        output_interface=output_interface,
        input_interface_name=names.get(input_interface or -1),
        output_interface_name=names.get(output_interface or -1),
        vrf_name=vrfs.get(vrf if vrf is not None else -1),
        next_hop=_address(values, "ipNextHopIPv4Address", "ipNextHopIPv6Address"),
        sampling_interval=sampling,
        export_time=_datetime(export_ms),
        fields=values,
    )
