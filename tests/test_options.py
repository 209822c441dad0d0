"""Options records joined to flows: sampling per sampler, interface and VRF names."""

from __future__ import annotations

from collector.decoder import Decoder
from collector.options import OptionsStore
from collector.records import build_flow
from tests.conftest import EXPORTS
from tests.packets import flowset, u8, u16, u32, v9_header


def v9_options_template(template_id: int, scope: tuple, fields: tuple) -> bytes:
    """A v9 options template flowset: scope and option lengths in bytes."""
    body = (
        u16(template_id)
        + u16(4 * len(scope))  # scope length, bytes
        + u16(4 * len(fields))  # option length, bytes
        + b"".join(u16(t) + u16(n) for t, n in scope + fields)
    )
    return flowset(1, body)


def test_sampler_interval_and_interface_names_reach_the_flow() -> None:
    """A flow naming sampler 3 and ifIndex 7 carries 1-in-100 and "ge-0/0/7"."""
    sampler_template = v9_options_template(
        300,
        ((4, 1),),  # scope: cache (1 byte)
        ((48, 1), (50, 4)),  # samplerId, samplerRandomInterval
    )
    sampler_data = flowset(300, u8(0) + u8(3) + u32(100) + b"\x00\x00")
    interface_template = v9_options_template(
        301,
        ((2, 4),),  # scope: interface (ifIndex, 4 bytes)
        ((82, 8),),  # interfaceName
    )
    interface_data = flowset(301, u32(7) + b"ge-0/0/7")
    flow_template = flowset(
        0,
        u16(256)  # template id
        + u16(3)  # field count
        + u16(10)  # ingressInterface
        + u16(4)
        + u16(48)  # samplerId
        + u16(1)
        + u16(2)  # packetDeltaCount
        + u16(4),
    )
    flow_data = flowset(256, u32(7) + u8(3) + u32(5) + b"\x00\x00\x00")

    decoder = Decoder()
    options = OptionsStore()
    packet = (
        v9_header()
        + sampler_template
        + sampler_data
        + interface_template
        + interface_data
        + flow_template
        + flow_data
    )
    out = decoder.decode(packet, "192.0.2.1", 2055, 0.0)
    for batch in out.options:
        options.learn(batch)
    batch = out.flows[0]
    flow = build_flow(
        batch.layout,
        batch.rows[0],
        batch.context,
        options.get("192.0.2.1", 0),
    )
    assert flow.sampling_interval == 100
    assert flow.input_interface_name == "ge-0/0/7"
    assert flow.packets == 5
    assert flow.packets_scaled == 500


def test_softflowd_ipfix_times_come_from_its_options_record() -> None:
    """softflowd's IPFIX uptimes become absolute via systemInitTimeMilliseconds."""
    from collector.capture import read_capture

    decoder = Decoder()
    options = OptionsStore()
    flows = []
    for datagram in read_capture(EXPORTS / "softflowd-v10.pcap"):
        out = decoder.decode(
            datagram.data, datagram.exporter, datagram.port, datagram.received
        )
        for batch in out.options:
            options.learn(batch)
        for batch in out.flows:
            domain = options.get(batch.context.exporter, batch.context.domain)
            flows += [
                build_flow(batch.layout, r, batch.context, domain) for r in batch.rows
            ]
    assert flows
    assert all(f.time_trusted for f in flows)
    assert {f.start.date().isoformat() for f in flows if f.start} == {"2026-01-15"}


def test_vrf_names_reach_the_flow() -> None:
    """An options record naming VRF 5 labels flows with ingressVRFID 5."""
    vrf_template = flowset(
        3,
        u16(300)  # template id
        + u16(2)  # field count
        + u16(1)  # scope field count
        + u16(234)  # ingressVRFID (scope)
        + u16(4)
        + u16(236)  # VRFname
        + u16(8),
    )
    vrf_data = flowset(300, u32(5) + b"blue\x00\x00\x00\x00")
    flow_template = flowset(2, u16(256) + u16(2) + u16(234) + u16(4) + u16(2) + u16(4))
    flow_data = flowset(256, u32(5) + u32(9))
    body = vrf_template + vrf_data + flow_template + flow_data
    header = u16(10) + u16(16 + len(body)) + u32(1_768_471_200) + u32(0) + u32(0)
    decoder = Decoder()
    options = OptionsStore()
    out = decoder.decode(header + body, "192.0.2.1", 4739, 0.0)
    for batch in out.options:
        options.learn(batch)
    batch = out.flows[0]
    flow = build_flow(
        batch.layout, batch.rows[0], batch.context, options.get("192.0.2.1", 0)
    )
    assert flow.vrf_name == "blue"
