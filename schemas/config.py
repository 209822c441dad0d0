"""The configuration model: one place that says what flowtrap may be told."""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, IPvAnyNetwork

DEFAULT_LISTEN = ("0.0.0.0:2055", "0.0.0.0:4739")
DEFAULT_INTERNAL = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "fc00::/7",
    "fe80::/10",
)


def parse_endpoint(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` or ``[V6]:PORT`` into host and port, or raise ValueError."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT (for example 0.0.0.0:2055)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{text!r}: {host!r} is not an IP address; use 0.0.0.0, :: or one "
            "of this host's addresses"
        ) from None
    if not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError(
            f"{text!r}: the port must be a number from 1 to 65535 (0 picks a free one)"
        )
    return host, int(port_text)


def _check_endpoint(text: str) -> str:
    """Validate one listen address."""
    parse_endpoint(text)
    return text


Endpoint = Annotated[str, AfterValidator(_check_endpoint)]


class _Section(BaseModel):
    """Base for config sections: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DetectionConfig(_Section):
    """Which detectors run and how findings are grouped into events."""

    enabled: list[str] = Field(
        default=["cups_browsed_internal_external"],
        description="Detector names to run; an unknown name stops start-up.",
    )
    window_seconds: float = Field(
        default=60.0, gt=0, description="Findings per key within this become one event."
    )
    lateness_seconds: float = Field(
        default=120.0,
        ge=0,
        description="How long after a window ends late flows may still join it.",
    )
    max_open_windows: int = Field(default=100_000, gt=0)
    sample_size: int = Field(
        default=5, ge=0, le=50, description="Flow records kept in each event."
    )


class LimitsConfig(_Section):
    """Caps on the state that exporters can grow."""

    max_exporters: int = Field(default=10_000, gt=0)
    max_templates_per_exporter: int = Field(default=256, gt=0)
    held_flowsets_per_exporter: int = Field(default=64, ge=0)
    held_bytes_per_exporter: int = Field(default=256 * 1024, ge=0)
    held_bytes_total: int = Field(default=32 * 1024 * 1024, ge=0)
    held_max_age_seconds: float = Field(default=600.0, ge=0)
    template_scope_by_port: bool = Field(
        default=False,
        description="Scope templates by exporter port too (RFC 7011 §8.4); off "
        "because exporters change port when they restart.",
    )


class Config(_Section):
    """The whole configuration."""

    listen: list[Endpoint] = Field(
        default=list(DEFAULT_LISTEN),
        description="UDP addresses to listen on; each takes v5, v9 and IPFIX.",
    )
    events: str = Field(default="-", description="Event output: a file path or -.")
    internal_networks: list[IPvAnyNetwork] = Field(
        default=[ipaddress.ip_network(n) for n in DEFAULT_INTERNAL],
        description="Networks that are inside; everything else is external.",
    )
    time_tolerance_seconds: float = Field(
        default=86_400.0,
        gt=0,
        description="Flow times further than this from the export time are "
        "flagged untrusted and replaced by the export time.",
    )
    receive_buffer_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=65_536,
        description="SO_RCVBUF asked for each socket (the kernel may cap it).",
    )
    detection: DetectionConfig = DetectionConfig()
    limits: LimitsConfig = LimitsConfig()
