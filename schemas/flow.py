"""The flow record: one decoded flow, whatever version and exporter it came from."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress, computed_field

# The largest counter JSON readers take: scaled counters saturate here.
COUNTER_MAX = 2**64 - 1


class FlowRecord(BaseModel):
    """One flow record, with the common fields typed and every field kept by name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    exporter: IPvAnyAddress = Field(description="Address the export packet came from.")
    exporter_port: int = Field(description="UDP source port of the export packet.")
    version: int = Field(description="5, 9 or 10 (IPFIX).")
    observation_domain_id: int = Field(
        description="IPFIX observation domain id, v9 source id, or v5 engine type "
        "and id (type << 8 | id)."
    )
    template_id: int | None = Field(
        default=None, description="Template the record was decoded with (v9, IPFIX)."
    )
    src_addr: IPvAnyAddress | None = None
    dst_addr: IPvAnyAddress | None = None
    src_port: int | None = None
    dst_port: int | None = None
    protocol: int | None = Field(default=None, description="IP protocol number.")
    packets: int | None = Field(default=None, description="Packets as exported.")
    bytes: int | None = Field(default=None, description="Octets as exported.")
    start: datetime | None = Field(default=None, description="Flow start, UTC.")
    end: datetime | None = Field(default=None, description="Flow end, UTC.")
    time_trusted: bool = Field(
        default=True,
        description="False when the exporter's times were missing or too far from "
        "the export time to believe; start and end are then the export time.",
    )
    tcp_flags: int | None = None
    input_interface: int | None = None
    output_interface: int | None = None
    input_interface_name: str | None = Field(
        default=None, description="From the exporter's interface options records."
    )
    output_interface_name: str | None = None
    vrf_name: str | None = Field(
        default=None, description="From the exporter's VRF options records."
    )
    next_hop: IPvAnyAddress | None = None
    sampling_interval: int | None = Field(
        default=None, description="Sampling interval as exported (1 in N packets)."
    )
    export_time: datetime = Field(description="Export time from the packet header.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def packets_scaled(self) -> int | None:
        """Packets multiplied by the sampling interval: the estimate of the truth."""
        if self.packets is None:
            return None
        return min(self.packets * (self.sampling_interval or 1), COUNTER_MAX)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def bytes_scaled(self) -> int | None:
        """Bytes multiplied by the sampling interval."""
        if self.bytes is None:
            return None
        return min(self.bytes * (self.sampling_interval or 1), COUNTER_MAX)

    fields: dict[str, Any] = Field(
        default_factory=dict,
        description="Every decoded field by information-element name; repeats of "
        "one element are suffixed #2, #3; enterprise elements are named "
        "e<enterprise number>.<id>.",
    )
