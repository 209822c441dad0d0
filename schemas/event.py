"""The event: one finding window as an ECS 8.x-compatible JSON document (schema v1)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

Direction = Literal["inbound", "outbound", "internal", "external", "unknown"]


class _Strict(BaseModel):
    """Base for event parts: no unknown keys, values fixed once built."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class EventInfo(_Strict):
    """ECS ``event.*``."""

    id: str = Field(description="Deterministic UUID over detector, key and window.")
    kind: Literal["alert"] = "alert"
    category: list[str] = ["network", "intrusion_detection"]
    type: list[str] = ["connection", "info"]
    action: str = Field(description="The detector's name.")
    dataset: str = "flowtrap.alert"
    module: str = "flowtrap"
    severity: int = Field(ge=0, le=100)
    risk_score: float = Field(ge=0, le=100)
    start: datetime
    end: datetime


class RuleInfo(_Strict):
    """ECS ``rule.*``."""

    id: str
    name: str
    version: str
    description: str
    reference: str
    category: str = "network"


class Endpoint(_Strict):
    """ECS ``source`` / ``destination``."""

    ip: str
    port: int | None = None


class NetworkInfo(_Strict):
    """ECS ``network.*``."""

    transport: str
    type: Literal["ipv4", "ipv6"]
    iana_number: str
    direction: Direction


class ObserverInfo(_Strict):
    """ECS ``observer.*``: the exporters that reported the flows."""

    ip: list[str]
    type: str = "netflow-exporter"


class RelatedInfo(_Strict):
    """ECS ``related.*``."""

    ip: list[str]


class ThreatRef(_Strict):
    """An ATT&CK tactic or technique reference."""

    id: list[str]
    name: list[str]
    reference: list[str]


class ThreatInfo(_Strict):
    """ECS ``threat.*``."""

    framework: str = "MITRE ATT&CK"
    tactic: ThreatRef
    technique: ThreatRef


class VulnerabilityInfo(_Strict):
    """ECS ``vulnerability.*``."""

    id: list[str]


class WindowInfo(_Strict):
    """The aggregation window the event covers."""

    start: datetime
    end: datetime
    seconds: float


class FlowtrapInfo(_Strict):
    """flowtrap's own namespace: the aggregate behind the event."""

    schema_version: int = SCHEMA_VERSION
    detector: str
    flows: int
    packets: int
    bytes: int
    packets_scaled: int
    bytes_scaled: int
    window: WindowInfo
    sample: list[dict[str, Any]] = Field(
        description="Up to a few of the flow records behind the event."
    )


class Event(_Strict):
    """One alert event, one JSON line."""

    timestamp: datetime = Field(alias="@timestamp")
    event: EventInfo
    rule: RuleInfo
    source: Endpoint
    destination: Endpoint
    network: NetworkInfo
    observer: ObserverInfo
    related: RelatedInfo
    threat: ThreatInfo
    vulnerability: VulnerabilityInfo
    tags: list[str]
    message: str
    flowtrap: FlowtrapInfo
