"""The event: one finding window as an ECS 8.x-compatible JSON document (schema v1)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

SCHEMA_VERSION = 1

# An event as outputs write it: the JSON form of ``Event`` (ECS names, JSON
# values), which the pipeline builds directly.
Document = dict[str, Any]

Direction = Literal["inbound", "outbound", "internal", "external", "unknown"]


class _Strict(BaseModel):
    """Base for event parts: no unknown keys, values fixed once built."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_serializer(mode="wrap")
    def _omit_missing(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave out fields without a value, as ECS documents do."""
        data: dict[str, Any] = handler(self)
        return {key: value for key, value in data.items() if value is not None}


class EventInfo(_Strict):
    """ECS ``event.*``."""

    id: str = Field(
        description="UUIDv5 over detector, rule version, key and window start: "
        "the same traffic gives the same id on any collector."
    )
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
    community_id: str | None = Field(
        default=None, description="Community ID v1 of the lead flow's 5-tuple."
    )


class Interface(_Strict):
    """ECS ``observer.ingress.interface`` / ``observer.egress.interface``."""

    id: str = Field(description="SNMP ifIndex as the exporter reported it.")


class ObserverSide(_Strict):
    """ECS ``observer.ingress`` / ``observer.egress``."""

    interface: Interface


class ObserverInfo(_Strict):
    """ECS ``observer.*``: the exporters that reported the flows."""

    ip: list[str]
    type: str = "netflow-exporter"
    ingress: ObserverSide | None = None
    egress: ObserverSide | None = None


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
    enumeration: str = "CVE"
    reference: str | None = None


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
    packets: int = Field(description="Packets as exported, summed.")
    bytes: int = Field(description="Octets as exported, summed.")
    packets_scaled: int = Field(description="Packets times each sampling interval.")
    bytes_scaled: int = Field(description="Octets times each sampling interval.")
    distinct_destinations: int = Field(
        description="Destination addresses among the flows (at most 1024 counted)."
    )
    time_trusted: bool = Field(
        description="False when some flow's times were replaced by its export time."
    )
    window: WindowInfo
    details: dict[str, str | int | float | bool] = Field(
        default={},
        description="What the detector adds for the lead flow, e.g. the probe a "
        "callback followed.",
    )
    sample: list[dict[str, Any]] = Field(
        description="Up to sample_size of the flow records behind the event."
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
