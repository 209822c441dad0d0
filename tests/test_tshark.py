"""Differential test: flowtrap's decoded records against tshark's, field for field.

tshark (Wireshark's NetFlow/IPFIX dissector) is an independent decoder. Every replay
group of the public captures, and every exporter fixture in ``tests/fixtures/exports``,
is written at test time into one pcap (each export packet wrapped in Ethernet/IP/UDP
to port 2055 from its exporter address), decoded by ``tshark -T json``, and decoded
by one flowtrap ``Decoder`` from the same datagrams. Records are grouped by
(exporter, version, observation domain id, template id) and compared as multisets of
canonical records over every field whose tshark rendering is mapped below. Each
remaining difference is listed in ``KNOWN_DIFFERENCES`` with the reason, checked
against the bytes.
"""

from __future__ import annotations

import calendar
import ipaddress
import json
import re
import socket
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import dpkt
import pytest

from collector.capture import Datagram, read_capture
from collector.decoder import Decoder
from tests.conftest import CAPTURES, EXPORTS, require_corpus, require_tool
from tests.corpus import manifest

pytestmark = pytest.mark.corpus

RAW_EXPORTER = "192.0.2.1"
RAW_PORT = 9995
COLLECTOR_V4 = "192.0.2.2"
COLLECTOR_V6 = "2001:db8::2"
COLLECTOR_PORT = 2055
CAPTURE_SUFFIXES = (".pcap", ".pcapng")
FIXTURE_PREFIX = "fixture: "
TSHARK_TIMEOUT = 120

# --- How tshark writes a value, and how flowtrap's value reads the same -------------

Canonical = tuple[tuple[str, Any], ...]
Pairs = list[tuple[str, Any]]

# NTP era 0 starts 70 years (17 of them leap) before the UNIX epoch.
NTP_TO_UNIX = 2_208_988_800
_MONTHS = {name: index for index, name in enumerate(calendar.month_abbr) if name}
_DATE = re.compile(r"(\w{3}) +(\d+), (\d+) (\d\d):(\d\d):(\d\d)\.(\d{9}) UTC$")


def _number(text: str) -> int:
    """Read a decimal or 0x-prefixed hexadecimal number."""
    return int(text, 16) if text.startswith("0x") else int(text)


def _octets(text: str) -> str:
    """Read colon-separated hex bytes as flowtrap's plain hex string."""
    return text.replace(":", "")


def _octets_number(text: str) -> int:
    """Read colon-separated hex bytes as one big-endian number."""
    return int(_octets(text) or "0", 16)


def _ipv6(text: str) -> str:
    """Write an IPv6 address one way: tshark shows IPv4-mapped ones dotted."""
    return str(ipaddress.IPv6Address(text))


def _uptime_ms(text: str) -> int:
    """Read a sysUptime-relative time in seconds as milliseconds."""
    return int(Decimal(text) * 1000)


def _date_ns(text: str) -> int:
    """Read an absolute UTC date (``Nov 21, 2017 14:32:15.000000000 UTC``) as ns."""
    match = _DATE.match(text)
    if match is None:
        return -1
    month, day, year, hour, minute, second, fraction = match.groups()
    seconds = calendar.timegm(
        (int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second))
    )
    return seconds * 1_000_000_000 + int(fraction)


# tshark files forwardingStatus's reason code under a name per status, but for the
# 4-byte encoding (IANA's unsigned32) always under "unknown" (status 3 seen with
# unknown_code 3); the value is the low 6 bits either way, so all four are one field.
FORWARDING_CODES = {
    f"cflow.forwarding_status_{name}_code": "cflow.forwarding_status_code"
    for name in ("unknown", "forward", "drop", "consume")
}

# How each tshark field's text reads; every other tshark field is left out.
PARSERS: dict[str, Callable[[str], Any]] = {
    **dict.fromkeys(
        (
            "cflow.srcaddr",
            "cflow.dstaddr",
            "cflow.nexthop",
            "cflow.bgpnexthop",
            "cflow.toplabeladdr",
            "cflow.srcprefix",
            "cflow.post_natsource_ipv4_address",
            "cflow.post_natdestination_ipv4_address",
            "cflow.sta_ipv4_address",
            "cflow.exporter_addr",
            "cflow.srcmac",
            "cflow.dstmac",
            "cflow.post_srcmac",
            "cflow.post_dstmac",
            "cflow.sta_mac_address",
            "cflow.wtp_mac_address",
            "cflow.sampler_name",
            "cflow.selector_name",
            "cflow.if_name",
            "cflow.if_descr",
            "cflow.appl_name",
            "cflow.appl_desc",
            "cflow.vrfname",
            "cflow.wlan_ssid",
            "cflow.aaa_username",
        ),
        str,
    ),
    **dict.fromkeys(
        (
            "cflow.srcport",
            "cflow.dstport",
            "cflow.protocol",
            "cflow.packets",
            "cflow.octets",
            "cflow.permanent_packets",
            "cflow.permanent_octets",
            "cflow.post_packets",
            "cflow.post_octets",
            "cflow.delta_octets_squared",
            "cflow.flows",
            "cflow.inputint",
            "cflow.outputint",
            "cflow.ingress_physical_interface",
            "cflow.egress_physical_interface",
            "cflow.ingress_vrfid",
            "cflow.egress_vrfid",
            "cflow.tos",
            "cflow.post_tos",
            "cflow.ip_dscp",
            "cflow.post_ip_diff_serv_code_point",
            "cflow.ip_precedence",
            "cflow.tcpflags",
            "cflow.direction",
            "cflow.srcas",
            "cflow.dstas",
            "cflow.peer_srcas",
            "cflow.peer_dstas",
            "cflow.srcmask",
            "cflow.dstmask",
            "cflow.srcmaskv6",
            "cflow.dstmaskv6",
            "cflow.ipv6flowlabel",
            "cflow.ipv6_exthdr",
            "cflow.ipv6_next_hdr",
            "cflow.ttl_min",
            "cflow.ttl_max",
            "cflow.length_min",
            "cflow.length_max",
            "cflow.ip_version",
            "cflow.vlanid",
            "cflow.post_vlanid",
            "cflow.dot1q_vlan_id",
            "cflow.dot1q_customer_vlan_id",
            "cflow.post_dot1q_vlan_id",
            "cflow.post_dot1q_customer_vlan_id",
            "cflow.dot1q_priority",
            "cflow.ethernet_type",
            "cflow.icmp_type_code_ipv4",
            "cflow.icmp_ipv4_type",
            "cflow.icmp_ipv4_code",
            "cflow.icmp_ipv6_type",
            "cflow.icmp_ipv6_code",
            "cflow.frag_ident",
            "cflow.flow_end_reason",
            "cflow.flow_id",
            "cflow.sampler_id",
            "cflow.sampler_mode",
            "cflow.sampler_random_interval",
            "cflow.sampling_interval",
            "cflow.sampling_algorithm",
            "cflow.selector_id",
            "cflow.selector_algorithm",
            "cflow.sampling_packet_interval",
            "cflow.sampling_packet_space",
            "cflow.sampling_size",
            "cflow.sampling_population",
            "cflow.toplabeltype",
            "cflow.mpls_top_label_prefix_length",
            "cflow.mpls_label_length",
            "cflow.mpls_label",
            "cflow.mpls_exp",
            "cflow.mpls_bos",
            "cflow.forwarding_status",
            *FORWARDING_CODES,
            "cflow.appl_id.classification_engine_id",
            "cflow.firewall_event",
            "cflow.fw_ext_event",
            "cflow.nat_event",
            "cflow.post_naptsource_transport_port",
            "cflow.post_naptdestination_transport_port",
            "cflow.initiator_octets",
            "cflow.responder_octets",
            "cflow.engine_type",
            "cflow.engine_id",
            "cflow.flow_exporter",
            "cflow.mp_id",
            "cflow.observation_point_id",
            "cflow.od_id",
            "cflow.packetsexp",
            "cflow.flowsexp",
            "cflow.octetsexp",
            "cflow.ignore_packets",
            "cflow.notsent_packets",
            "cflow.flow_active_timeout",
            "cflow.flow_inactive_timeout",
            "cflow.export_protocol_version",
            "cflow.exporter_protocol",
            "cflow.private_enterprise_number",
            "cflow.layer2_segment_id",
            "cflow.data_link_frame_size",
            "cflow.tcp_seq_num",
            "cflow.template_id",
        ),
        _number,
    ),
    **dict.fromkeys(
        (
            "cflow.srcaddrv6",
            "cflow.dstaddrv6",
            "cflow.nexthopv6",
            "cflow.bgpnexthopv6",
            "cflow.toplabeladdr_v6",
            "cflow.exporter_addr_v6",
        ),
        _ipv6,
    ),
    **dict.fromkeys(
        (
            "cflow.appl_id.selector_id",
            "cflow.data_link_frame_section",
            "cflow.ingress_acl_id",
            "cflow.egress_acl_id",
        ),
        _octets,
    ),
    "cflow.tcp_option_map": _octets_number,
    "cflow.timestart": _uptime_ms,
    "cflow.timeend": _uptime_ms,
    **dict.fromkeys(
        (
            "cflow.abstimestart",
            "cflow.abstimeend",
            "cflow.sys_init_time",
            "cflow.observation_time_seconds",
            "cflow.observation_time_milliseconds",
        ),
        _date_ns,
    ),
}


def _to(key: str) -> Callable[[Any], Pairs]:
    """Map a field to one tshark field with the same value."""
    return lambda value: [(key, value)]


def _to_ipv6(key: str) -> Callable[[Any], Pairs]:
    """Map an IPv6 address field, written the one way _ipv6 writes it."""
    return lambda value: [(key, _ipv6(value))]


def _uptime(relative: str, absolute: str) -> Callable[[Any], Pairs]:
    """Map a sysUptime-relative time in ms to tshark's relative field.

    tshark 4.0 tells relative times from absolute ones by a nonzero millisecond
    value, so an uptime of 0 is shown as the epoch under the absolute field.
    """
    return lambda value: [(relative, value)] if value else [(absolute, 0)]


def _seconds(key: str) -> Callable[[Any], Pairs]:
    """Map a dateTimeSeconds field to a tshark date, in ns."""
    return lambda value: [(key, value * 1_000_000_000)]


def _milliseconds(key: str) -> Callable[[Any], Pairs]:
    """Map a dateTimeMilliseconds field to a tshark date, in ns."""
    return lambda value: [(key, value * 1_000_000)]


def _ntp(key: str) -> Callable[[Any], Pairs]:
    """Map an NTP-format (RFC 7011 §6.1.9) field to a tshark date, in ns."""

    def pairs(value: Any) -> Pairs:
        seconds = (value >> 32) - NTP_TO_UNIX
        nanoseconds = ((value & 0xFFFFFFFF) * 1_000_000_000) >> 32
        return [(key, seconds * 1_000_000_000 + nanoseconds)]

    return pairs


def _mpls(value: Any) -> Pairs:
    """Split a label stack entry (RFC 3032 §2.1) as tshark shows it."""
    entry = int(value, 16)
    return [
        ("cflow.mpls_label", entry >> 4),
        ("cflow.mpls_exp", (entry >> 1) & 0x7),
        ("cflow.mpls_bos", entry & 0x1),
    ]


def _forwarding_status(value: Any) -> Pairs:
    """Split forwardingStatus (RFC 7270 §4.12): status in the top 2 bits, reason."""
    return [
        ("cflow.forwarding_status", value >> 6),
        ("cflow.forwarding_status_code", value & 0x3F),
    ]


def _application_id(value: Any) -> Pairs:
    """Split applicationId (RFC 6759 §4.1): classification engine, selector."""
    return [
        ("cflow.appl_id.classification_engine_id", int(value[:2], 16)),
        ("cflow.appl_id.selector_id", value[2:]),
    ]


def _icmp_v6(value: Any) -> Pairs:
    """Split icmpTypeCodeIPv6 into the type and code tshark shows."""
    return [
        ("cflow.icmp_ipv6_type", value >> 8),
        ("cflow.icmp_ipv6_code", value & 0xFF),
    ]


# flowtrap element name (without "#n", and "reverse" taken off RFC 5103 reverse
# elements, which tshark shows under the forward field) -> tshark fields. Mapped
# only where the tshark field was seen to carry the same element in the corpus.
MAPPING: dict[str, Callable[[Any], Pairs]] = {
    "sourceIPv4Address": _to("cflow.srcaddr"),
    "destinationIPv4Address": _to("cflow.dstaddr"),
    "sourceIPv6Address": _to_ipv6("cflow.srcaddrv6"),
    "destinationIPv6Address": _to_ipv6("cflow.dstaddrv6"),
    "sourceTransportPort": _to("cflow.srcport"),
    "destinationTransportPort": _to("cflow.dstport"),
    # tshark shows the TCP- and UDP-only port elements (180-183) as ports too.
    "udpSourcePort": _to("cflow.srcport"),
    "udpDestinationPort": _to("cflow.dstport"),
    "tcpSourcePort": _to("cflow.srcport"),
    "tcpDestinationPort": _to("cflow.dstport"),
    "protocolIdentifier": _to("cflow.protocol"),
    "packetDeltaCount": _to("cflow.packets"),
    "octetDeltaCount": _to("cflow.octets"),
    "packetTotalCount": _to("cflow.permanent_packets"),
    "octetTotalCount": _to("cflow.permanent_octets"),
    "postPacketDeltaCount": _to("cflow.post_packets"),
    "postOctetDeltaCount": _to("cflow.post_octets"),
    "octetDeltaSumOfSquares": _to("cflow.delta_octets_squared"),
    "deltaFlowCount": _to("cflow.flows"),
    "ingressInterface": _to("cflow.inputint"),
    "egressInterface": _to("cflow.outputint"),
    "ingressPhysicalInterface": _to("cflow.ingress_physical_interface"),
    "egressPhysicalInterface": _to("cflow.egress_physical_interface"),
    "ingressVRFID": _to("cflow.ingress_vrfid"),
    "egressVRFID": _to("cflow.egress_vrfid"),
    "VRFname": _to("cflow.vrfname"),
    "ipNextHopIPv4Address": _to("cflow.nexthop"),
    "ipNextHopIPv6Address": _to_ipv6("cflow.nexthopv6"),
    "bgpNextHopIPv4Address": _to("cflow.bgpnexthop"),
    "bgpNextHopIPv6Address": _to_ipv6("cflow.bgpnexthopv6"),
    "bgpSourceAsNumber": _to("cflow.srcas"),
    "bgpDestinationAsNumber": _to("cflow.dstas"),
    "bgpNextAdjacentAsNumber": _to("cflow.peer_dstas"),
    "bgpPrevAdjacentAsNumber": _to("cflow.peer_srcas"),
    "sourceIPv4PrefixLength": _to("cflow.srcmask"),
    "destinationIPv4PrefixLength": _to("cflow.dstmask"),
    "sourceIPv6PrefixLength": _to("cflow.srcmaskv6"),
    "destinationIPv6PrefixLength": _to("cflow.dstmaskv6"),
    "sourceIPv4Prefix": _to("cflow.srcprefix"),
    "ipClassOfService": _to("cflow.tos"),
    "postIpClassOfService": _to("cflow.post_tos"),
    "ipDiffServCodePoint": _to("cflow.ip_dscp"),
    "postIpDiffServCodePoint": _to("cflow.post_ip_diff_serv_code_point"),
    "ipPrecedence": _to("cflow.ip_precedence"),
    "tcpControlBits": _to("cflow.tcpflags"),
    "flowDirection": _to("cflow.direction"),
    "flowLabelIPv6": _to("cflow.ipv6flowlabel"),
    "ipv6ExtensionHeaders": _to("cflow.ipv6_exthdr"),
    "nextHeaderIPv6": _to("cflow.ipv6_next_hdr"),
    "minimumTTL": _to("cflow.ttl_min"),
    "maximumTTL": _to("cflow.ttl_max"),
    "minimumIpTotalLength": _to("cflow.length_min"),
    "maximumIpTotalLength": _to("cflow.length_max"),
    "ipVersion": _to("cflow.ip_version"),
    "vlanId": _to("cflow.vlanid"),
    "postVlanId": _to("cflow.post_vlanid"),
    "dot1qVlanId": _to("cflow.dot1q_vlan_id"),
    "dot1qCustomerVlanId": _to("cflow.dot1q_customer_vlan_id"),
    "postDot1qVlanId": _to("cflow.post_dot1q_vlan_id"),
    "postDot1qCustomerVlanId": _to("cflow.post_dot1q_customer_vlan_id"),
    "dot1qPriority": _to("cflow.dot1q_priority"),
    "ethernetType": _to("cflow.ethernet_type"),
    "sourceMacAddress": _to("cflow.srcmac"),
    "destinationMacAddress": _to("cflow.dstmac"),
    "postSourceMacAddress": _to("cflow.post_srcmac"),
    "postDestinationMacAddress": _to("cflow.post_dstmac"),
    "icmpTypeCodeIPv4": _to("cflow.icmp_type_code_ipv4"),
    "icmpTypeIPv4": _to("cflow.icmp_ipv4_type"),
    "icmpCodeIPv4": _to("cflow.icmp_ipv4_code"),
    "icmpTypeCodeIPv6": _icmp_v6,
    "fragmentIdentification": _to("cflow.frag_ident"),
    "flowEndReason": _to("cflow.flow_end_reason"),
    "flowId": _to("cflow.flow_id"),
    "tcpOptions": _to("cflow.tcp_option_map"),
    "tcpSequenceNumber": _to("cflow.tcp_seq_num"),
    "mplsTopLabelType": _to("cflow.toplabeltype"),
    "mplsTopLabelIPv4Address": _to("cflow.toplabeladdr"),
    "mplsTopLabelIPv6Address": _to_ipv6("cflow.toplabeladdr_v6"),
    "mplsTopLabelPrefixLength": _to("cflow.mpls_top_label_prefix_length"),
    "mplsLabelStackLength": _to("cflow.mpls_label_length"),
    "mplsTopLabelStackSection": _mpls,
    **{f"mplsLabelStackSection{depth}": _mpls for depth in range(2, 11)},
    "forwardingStatus": _forwarding_status,
    "applicationId": _application_id,
    "applicationName": _to("cflow.appl_name"),
    "applicationDescription": _to("cflow.appl_desc"),
    "samplerId": _to("cflow.sampler_id"),
    "samplerMode": _to("cflow.sampler_mode"),
    "samplerRandomInterval": _to("cflow.sampler_random_interval"),
    "samplerName": _to("cflow.sampler_name"),
    "samplingInterval": _to("cflow.sampling_interval"),
    "samplingAlgorithm": _to("cflow.sampling_algorithm"),
    "selectorId": _to("cflow.selector_id"),
    "selectorName": _to("cflow.selector_name"),
    "selectorAlgorithm": _to("cflow.selector_algorithm"),
    "samplingPacketInterval": _to("cflow.sampling_packet_interval"),
    "samplingPacketSpace": _to("cflow.sampling_packet_space"),
    "samplingSize": _to("cflow.sampling_size"),
    "samplingPopulation": _to("cflow.sampling_population"),
    "interfaceName": _to("cflow.if_name"),
    "interfaceDescription": _to("cflow.if_descr"),
    "firewallEvent": _to("cflow.firewall_event"),
    "NF_F_FW_EXT_EVENT": _to("cflow.fw_ext_event"),
    "NF_F_INGRESS_ACL_ID": _to("cflow.ingress_acl_id"),
    "NF_F_EGRESS_ACL_ID": _to("cflow.egress_acl_id"),
    "NF_F_USERNAME": _to("cflow.aaa_username"),
    "natEvent": _to("cflow.nat_event"),
    "postNATSourceIPv4Address": _to("cflow.post_natsource_ipv4_address"),
    "postNATDestinationIPv4Address": _to("cflow.post_natdestination_ipv4_address"),
    "postNAPTSourceTransportPort": _to("cflow.post_naptsource_transport_port"),
    "postNAPTDestinationTransportPort": _to(
        "cflow.post_naptdestination_transport_port"
    ),
    "initiatorOctets": _to("cflow.initiator_octets"),
    "responderOctets": _to("cflow.responder_octets"),
    "staMacAddress": _to("cflow.sta_mac_address"),
    "staIPv4Address": _to("cflow.sta_ipv4_address"),
    "wtpMacAddress": _to("cflow.wtp_mac_address"),
    "wlanSSID": _to("cflow.wlan_ssid"),
    "engineType": _to("cflow.engine_type"),
    "engineId": _to("cflow.engine_id"),
    "exportingProcessId": _to("cflow.flow_exporter"),
    "meteringProcessId": _to("cflow.mp_id"),
    "observationPointId": _to("cflow.observation_point_id"),
    "observationDomainId": _to("cflow.od_id"),
    "exporterIPv4Address": _to("cflow.exporter_addr"),
    "exporterIPv6Address": _to_ipv6("cflow.exporter_addr_v6"),
    "exportedMessageTotalCount": _to("cflow.packetsexp"),
    "exportedFlowRecordTotalCount": _to("cflow.flowsexp"),
    "exportedOctetTotalCount": _to("cflow.octetsexp"),
    "ignoredPacketTotalCount": _to("cflow.ignore_packets"),
    "notSentPacketTotalCount": _to("cflow.notsent_packets"),
    "flowActiveTimeout": _to("cflow.flow_active_timeout"),
    "flowIdleTimeout": _to("cflow.flow_inactive_timeout"),
    "exportProtocolVersion": _to("cflow.export_protocol_version"),
    "exportTransportProtocol": _to("cflow.exporter_protocol"),
    "privateEnterpriseNumber": _to("cflow.private_enterprise_number"),
    "layer2SegmentId": _to("cflow.layer2_segment_id"),
    "dataLinkFrameSize": _to("cflow.data_link_frame_size"),
    "dataLinkFrameSection": _to("cflow.data_link_frame_section"),
    "templateId": _to("cflow.template_id"),
    "flowStartSysUpTime": _uptime("cflow.timestart", "cflow.abstimestart"),
    "flowEndSysUpTime": _uptime("cflow.timeend", "cflow.abstimeend"),
    "flowStartSeconds": _seconds("cflow.abstimestart"),
    "flowEndSeconds": _seconds("cflow.abstimeend"),
    "flowStartMilliseconds": _milliseconds("cflow.abstimestart"),
    "flowEndMilliseconds": _milliseconds("cflow.abstimeend"),
    "flowStartMicroseconds": _ntp("cflow.abstimestart"),
    "flowEndMicroseconds": _ntp("cflow.abstimeend"),
    "flowStartNanoseconds": _ntp("cflow.abstimestart"),
    "flowEndNanoseconds": _ntp("cflow.abstimeend"),
    "systemInitTimeMilliseconds": _milliseconds("cflow.sys_init_time"),
    "observationTimeSeconds": _seconds("cflow.observation_time_seconds"),
    "observationTimeMilliseconds": _milliseconds("cflow.observation_time_milliseconds"),
}

_REPEAT = re.compile(r"#\d+$")


def _mapper(name: str) -> Callable[[Any], Pairs] | None:
    """Return the tshark mapping of a flowtrap element name, or None."""
    base = _REPEAT.sub("", name)
    if base in MAPPING:
        return MAPPING[base]
    if base.startswith("reverse") and len(base) > len("reverse"):
        forward = base[len("reverse")].lower() + base[len("reverse") + 1 :]
        return MAPPING.get(forward)
    return None


def canonical(pairs: Pairs) -> Canonical:
    """Order a record's (tshark field, value) pairs by field, keeping repeats in order.

    Repeats of one field (``name#2``, reverse elements, label stack entries) keep
    their template order, which is the order tshark shows them in.
    """
    by_field: dict[str, list[Any]] = {}
    for key, value in pairs:
        by_field.setdefault(key, []).append(value)
    return tuple((key, tuple(by_field[key])) for key in sorted(by_field))


# tshark's v5 dissector shows First and Last as uptimes even when they are 0.
V5_MAPPING: dict[str, Callable[[Any], Pairs]] = {
    "flowStartSysUpTime": _to("cflow.timestart"),
    "flowEndSysUpTime": _to("cflow.timeend"),
}


def ours_canonical(values: dict[str, Any], version: int) -> Canonical:
    """Turn one flowtrap record into tshark's fields and values."""
    pairs: Pairs = []
    for name, value in values.items():
        mapper = V5_MAPPING.get(name) if version == 5 else None
        mapper = mapper or _mapper(name)
        if mapper is not None:
            pairs.extend(mapper(value))
    return canonical(pairs)


# --- The sources: replay groups and exporter fixtures, as datagrams ------------------


def _sources() -> list[str]:
    """Return every replay group and exporter fixture, or a placeholder that skips."""
    fixtures = [FIXTURE_PREFIX + path.name for path in sorted(EXPORTS.glob("*.pcap"))]
    if not (CAPTURES / "manifest.json").is_file():
        return ["no-corpus", *fixtures]
    return [*manifest()["replay_groups"], *fixtures]


SOURCES = _sources()


def _files(source: str) -> list[Path]:
    """Return a source's files in feeding order."""
    if source.startswith(FIXTURE_PREFIX):
        return [EXPORTS / source.removeprefix(FIXTURE_PREFIX)]
    corpus = require_corpus()
    return [corpus / name for name in manifest()["replay_groups"][source]["files"]]


def source_datagrams(source: str) -> list[Datagram]:
    """Return a source's export packets in order; raw files come from RAW_EXPORTER."""
    datagrams: list[Datagram] = []
    for path in _files(source):
        if path.suffix in CAPTURE_SUFFIXES:
            datagrams.extend(read_capture(path))
        else:
            datagrams.append(Datagram(RAW_EXPORTER, RAW_PORT, 0.0, path.read_bytes()))
    return datagrams


def _frame(datagram: Datagram) -> bytes:
    """Wrap an export packet in Ethernet/IP/UDP from its exporter to the collector."""
    udp = dpkt.udp.UDP(sport=datagram.port, dport=COLLECTOR_PORT, data=datagram.data)
    udp.ulen = len(udp)
    ip: Any
    if ":" in datagram.exporter:
        ip = dpkt.ip6.IP6(
            src=socket.inet_pton(socket.AF_INET6, datagram.exporter),
            dst=socket.inet_pton(socket.AF_INET6, COLLECTOR_V6),
            nxt=dpkt.ip.IP_PROTO_UDP,
            hlim=64,
            data=udp,
        )
        ip.plen = len(udp)
        ethertype = dpkt.ethernet.ETH_TYPE_IP6
    else:
        ip = dpkt.ip.IP(
            src=socket.inet_aton(datagram.exporter),
            dst=socket.inet_aton(COLLECTOR_V4),
            p=dpkt.ip.IP_PROTO_UDP,
            data=udp,
        )
        ethertype = dpkt.ethernet.ETH_TYPE_IP
    frame = dpkt.ethernet.Ethernet(
        src=b"\x02\x00\x00\x00\x00\x01",
        dst=b"\x02\x00\x00\x00\x00\x02",
        type=ethertype,
        data=ip,
    )
    return bytes(frame)


def write_pcap(datagrams: list[Datagram], path: Path) -> None:
    """Write the datagrams as one Ethernet pcap, in order, with their own times."""
    with path.open("wb") as handle:
        writer = dpkt.pcap.Writer(handle, snaplen=262_144)
        for datagram in datagrams:
            writer.writepkt(_frame(datagram), ts=datagram.received)


# --- Records from each decoder ----------------------------------------------------

RecordKey = tuple[str, int, int, int]
"""(exporter, version, observation domain id, template id); v5 uses id 0."""


def flowtrap_records(datagrams: list[Datagram]) -> Counter[tuple[RecordKey, Canonical]]:
    """Decode the datagrams with one flowtrap Decoder, flows and options alike."""
    decoder = Decoder()
    records: Counter[tuple[RecordKey, Canonical]] = Counter()
    for datagram in datagrams:
        out = decoder.decode(
            datagram.data, datagram.exporter, datagram.port, datagram.received
        )
        for batch in out.flows + out.options:
            context = batch.context
            key = (
                context.exporter,
                context.version,
                context.domain,
                batch.layout.template_id,
            )
            for row in batch.rows:
                values = batch.layout.values(row)
                records[key, ours_canonical(values, context.version)] += 1
    assert decoder.stats.errors["decoder_bug"] == 0
    return records


def _pairs_hook(pairs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Keep JSON objects as pair lists: tshark repeats keys for repeated fields."""
    return pairs


def _leaves(node: list[tuple[str, Any]]) -> Iterator[tuple[str, str]]:
    """Yield every mapped cflow field under a node, depth first, in display order."""
    for key, value in node:
        if isinstance(value, list):
            yield from _leaves(value)
        elif key in PARSERS:
            yield key, value


_SET = re.compile(r"(?:Flow)?Set \d+ \[id=(\d+)\]")
# Ixia records get the application name appended: "Flow 1 (unknown)".
_FLOW = re.compile(r"Flow \d+( |$)")
_PDU = re.compile(r"pdu \d+/\d+$")


def _theirs_canonical(node: list[tuple[str, Any]]) -> Canonical:
    """Turn one tshark record into parsed (field, value) pairs."""
    return canonical(
        [
            (FORWARDING_CODES.get(key, key), PARSERS[key](text))
            for key, text in _leaves(node)
        ]
    )


def _cflow_records(
    exporter: str, cflow: list[tuple[str, Any]]
) -> Iterator[tuple[RecordKey, Canonical]]:
    """Yield the records of one dissected export packet."""
    header = dict(cflow)
    version = int(header["cflow.version"])
    if version == 5:
        # flowtrap's v5 domain: engine type, then engine id (Cisco's v5 header).
        engine_type, engine_id = header["cflow.engine_type"], header["cflow.engine_id"]
        domain = (int(engine_type) << 8) | int(engine_id)
    else:
        domain = int(header.get("cflow.od_id", header.get("cflow.source_id", 0)))
    for key, node in cflow:
        if _PDU.match(key):
            yield (exporter, version, domain, 0), _theirs_canonical(node)
            continue
        match = _SET.match(key)
        if match is None or int(match.group(1)) < 256:
            continue
        record_key = (exporter, version, domain, int(match.group(1)))
        for record, fields in node:
            if _FLOW.match(record):
                yield record_key, _theirs_canonical(fields)


def tshark_records(pcap: Path) -> Counter[tuple[RecordKey, Canonical]]:
    """Decode a pcap with tshark as NetFlow/IPFIX on the collector port."""
    tshark = require_tool("tshark")
    command = [tshark, "-n", "-r", str(pcap)]
    command += ["-d", f"udp.port=={COLLECTOR_PORT},cflow", "-T", "json"]
    result = subprocess.run(
        command, capture_output=True, check=False, timeout=TSHARK_TIMEOUT
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    packets = json.loads(result.stdout, object_pairs_hook=_pairs_hook)

    records: Counter[tuple[RecordKey, Canonical]] = Counter()
    for packet in packets:
        layers = dict(dict(packet)["_source"])["layers"]
        network = dict(dict(layers).get("ip") or dict(layers).get("ipv6") or [])
        exporter = network.get("ip.src") or network.get("ipv6.src")
        for name, cflow in layers:
            if name == "cflow":
                records.update(_cflow_records(exporter, cflow))
    return records


# --- Comparing -----------------------------------------------------------------------


@dataclass(slots=True)
class Comparison:
    """How one source's records from flowtrap and tshark line up."""

    agreed: int = 0
    # Per template id: records only flowtrap decoded, records only tshark decoded.
    only_ours: Counter[int] = field(default_factory=Counter)
    only_theirs: Counter[int] = field(default_factory=Counter)
    # Per tshark field: how many agreeing records carried it.
    fields: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def differences(self) -> dict[int, tuple[int, int]]:
        """Return {template id: (flowtrap-only records, tshark-only records)}."""
        ids = set(self.only_ours) | set(self.only_theirs)
        return {tid: (self.only_ours[tid], self.only_theirs[tid]) for tid in ids}


def _field_diff(ours: Canonical, theirs: Canonical) -> str:
    """Describe the fields on which two canonical records differ."""
    mine, other = dict(ours), dict(theirs)
    keys = sorted(set(mine) | set(other))
    return ", ".join(
        f"{key}: flowtrap={mine.get(key)} tshark={other.get(key)}"
        for key in keys
        if mine.get(key) != other.get(key)
    )


def compare(
    ours: Counter[tuple[RecordKey, Canonical]],
    theirs: Counter[tuple[RecordKey, Canonical]],
) -> Comparison:
    """Match records as multisets per record key and describe what is left."""
    both = ours & theirs
    result = Comparison(agreed=sum(both.values()))
    for (_, record), count in both.items():
        for key, _ in record:
            result.fields[key] += count
    left_ours = ours - theirs
    left_theirs = theirs - ours
    for (key, _), count in left_ours.items():
        result.only_ours[key[3]] += count
    for (key, _), count in left_theirs.items():
        result.only_theirs[key[3]] += count

    # Pair leftovers of one record key to show which fields differ.
    theirs_by_key: dict[RecordKey, list[Canonical]] = {}
    for key, record in left_theirs.elements():
        theirs_by_key.setdefault(key, []).append(record)
    for key, record in left_ours.elements():
        partners = theirs_by_key.get(key)
        if partners:
            partner = partners.pop(0)
            result.examples.append(f"{key}: {_field_diff(record, partner)}")
        else:
            result.examples.append(f"{key}: only flowtrap decodes this record")
    for key, records in theirs_by_key.items():
        result.examples.extend(
            f"{key}: only tshark decodes this record" for _ in records
        )
    return result


# --- Byte facts behind the known differences ---------------------------------------

V9_HEADER_LENGTH = 20
IPFIX_HEADER_LENGTH = 16
V5_HEADER_LENGTH = 24
V5_RECORD_LENGTH = 48


def _u16(data: bytes, offset: int) -> int:
    """Read a big-endian 16-bit number."""
    return int.from_bytes(data[offset : offset + 2], "big")


def flowsets(data: bytes) -> list[tuple[int, bytes]]:
    """Walk the first message's flowsets by their lengths: (set id, body)."""
    version = _u16(data, 0)
    offset = V9_HEADER_LENGTH if version == 9 else IPFIX_HEADER_LENGTH
    end = _u16(data, 2) if version == 10 else len(data)
    found = []
    while end - offset >= 4:
        set_id, length = _u16(data, offset), _u16(data, offset + 2)
        if length < 4:
            break
        found.append((set_id, data[offset + 4 : offset + length]))
        offset += length
    return found


def v9_template_fields(body: bytes) -> list[tuple[int, int]]:
    """Return (element id, length) of the first template in a v9 template flowset."""
    count = _u16(body, 2)
    return [(_u16(body, 4 + 4 * n), _u16(body, 6 + 4 * n)) for n in range(count)]


def data_before_its_template(data: bytes) -> bool:
    """Whether the first flowset is data whose template comes later in the packet."""
    sets = flowsets(data)
    first_id = sets[0][0]
    return first_id >= 256 and any(
        set_id == 0 and _u16(body, 0) == first_id for set_id, body in sets[1:]
    )


def v9_count_understated(data: bytes) -> bool:
    """Whether the v9 header count is below the flowsets, each holding a record."""
    return _u16(data, 0) == 9 and _u16(data, 2) < len(flowsets(data))


def ipfix_message_lengths(data: bytes) -> list[int]:
    """Return the lengths of IPFIX messages written back to back."""
    lengths = []
    offset = 0
    while len(data) - offset >= IPFIX_HEADER_LENGTH and _u16(data, offset) == 10:
        length = _u16(data, offset + 2)
        lengths.append(length)
        offset += max(length, IPFIX_HEADER_LENGTH)
    return lengths


def v5_packet_counts(data: bytes) -> list[int]:
    """Return the header counts of v5 packets written back to back."""
    counts = []
    offset = 0
    while len(data) - offset >= V5_HEADER_LENGTH and _u16(data, offset) == 5:
        count = _u16(data, offset + 2)
        counts.append(count)
        offset += V5_HEADER_LENGTH + V5_RECORD_LENGTH * count
    return counts


def _first(datagrams: list[Datagram]) -> bytes:
    """Return the first export packet's bytes."""
    return datagrams[0].data


@dataclass(frozen=True, slots=True)
class Known:
    """A difference between the decoders, why, and the byte fact behind it."""

    # {template id: (records only flowtrap decodes, records only tshark decodes)}
    differences: dict[int, tuple[int, int]]
    reason: str
    fact: Callable[[list[Datagram]], bool]


TRUSTS_COUNT = "tshark trusts the v9 header count and stops early (B20)"
NO_HOLDING = "tshark does not hold data that arrives before its template"

KNOWN_DIFFERENCES: dict[str, Known] = {
    "logstash: IPFIX": Known(
        {1024: (6, 0)},
        "three IPFIX messages back to back; tshark reads only the first and takes "
        "the next message headers for sets with id 10",
        lambda d: ipfix_message_lengths(_first(d)) == [484, 64, 240],
    ),
    "logstash: Netflow 9 invalid 01": Known(
        # One record each of 2048 and 1024, one options record of 256.
        {256: (1, 0), 1024: (1, 0), 2048: (1, 0)},
        TRUSTS_COUNT + ": count 2 covers only the two templates of six flowsets",
        lambda d: _u16(_first(d), 2) == 2 and len(flowsets(_first(d))) == 6,
    ),
    "fixture: softflowd-v9-callback.pcap": Known(
        # One options record of 256, five records of 1024.
        {256: (1, 0), 1024: (5, 0)},
        TRUSTS_COUNT + ": count 5 covers only the five template records",
        lambda d: _u16(_first(d), 2) == 5 and v9_count_understated(_first(d)),
    ),
    "logstash: Netflow 9 H3C": Known(
        # 16 flowsets of one 80-byte record; tshark keeps 21 fields of the first.
        {3281: (16, 1)},
        "tshark reads element 43 (ipv4RouterSc, 2 bytes here) as an IPv4 address, "
        "calls the packet malformed and drops the rest of it",
        lambda d: (43, 2) in v9_template_fields(flowsets(_first(d))[0][1]),
    ),
    "logstash: Netflow 9 H3C Netstream with varstring": Known(
        {3281: (1, 1)},
        "tshark reads element 43 (ipv4RouterSc, 2 bytes here) as an IPv4 address, "
        "calls the packet malformed and drops the rest of the record",
        lambda d: (43, 2) in v9_template_fields(flowsets(_first(d))[0][1]),
    ),
    "logstash: Netflow 5 generic": Known(
        {0: (28, 0)},
        "twelve v5 packets back to back (30 records); tshark reads only the first "
        "packet's two records",
        lambda d: v5_packet_counts(_first(d)) == [2, 4, 4, 4] + [2] * 8,
    ),
    "python-netflow: v9 data before template in same packet": Known(
        {1024: (8, 0)},
        NO_HOLDING + ": flowset 1024 comes before its template in the packet",
        lambda d: data_before_its_template(_first(d)),
    ),
    "akvorado: data+templates": Known(
        # The first flowset 257 holds 11 records of 60 bytes (body 660).
        {257: (11, 0)},
        NO_HOLDING + ": the first flowset 257 comes before its template",
        lambda d: data_before_its_template(_first(d)),
    ),
    "python-netflow: v1": Known(
        {0: (0, 2)},
        "NetFlow v1 is decoded by tshark; flowtrap counts it unsupported_version",
        lambda d: _u16(_first(d), 0) == 1,
    ),
}

# Floors for the whole comparison, below what it reaches now (6,234 records).
MIN_AGREED_RECORDS = 6_000
MIN_SOURCES_WITH_AGREED_RECORDS = 100
# Every field that must have been compared in at least this many agreeing records.
CORE_FIELDS = (
    "cflow.srcaddr",
    "cflow.dstaddr",
    "cflow.srcaddrv6",
    "cflow.dstaddrv6",
    "cflow.srcport",
    "cflow.dstport",
    "cflow.protocol",
    "cflow.packets",
    "cflow.octets",
)
MIN_CORE_FIELD_RECORDS = 1_000


# --- Tests ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compared(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[str], Comparison]:
    """Compare a source once per module: one pcap, one tshark run, one Decoder."""
    results: dict[str, Comparison] = {}

    def run(source: str) -> Comparison:
        if source not in results:
            require_tool("tshark")
            datagrams = source_datagrams(source)
            pcap = tmp_path_factory.mktemp("tshark") / "source.pcap"
            write_pcap(datagrams, pcap)
            results[source] = compare(flowtrap_records(datagrams), tshark_records(pcap))
        return results[source]

    return run


@pytest.mark.parametrize("source", SOURCES)
def test_flowtrap_and_tshark_decode_the_same_records(
    source: str, compared: Callable[[str], Comparison]
) -> None:
    """Both decoders yield the same records field for field, bar known differences."""
    result = compared(source)

    known = KNOWN_DIFFERENCES.get(source)
    expected = known.differences if known else {}
    assert result.differences() == expected, "\n".join(result.examples[:20])


@pytest.mark.parametrize("source", sorted(KNOWN_DIFFERENCES))
def test_known_difference_has_its_stated_cause_in_the_bytes(source: str) -> None:
    """Each listed difference rests on a fact that the source's bytes show."""
    known = KNOWN_DIFFERENCES[source]

    datagrams = source_datagrams(source)

    assert known.fact(datagrams), known.reason


def test_tshark_comparison_covers_most_of_the_corpus(
    compared: Callable[[str], Comparison],
) -> None:
    """Most sources and thousands of records agree, on the core fields above all."""
    require_corpus()
    results = [compared(source) for source in SOURCES]

    agreed = sum(result.agreed for result in results)
    sources = sum(1 for result in results if result.agreed)
    fields: Counter[str] = Counter()
    for result in results:
        fields.update(result.fields)

    assert agreed >= MIN_AGREED_RECORDS
    assert sources >= MIN_SOURCES_WITH_AGREED_RECORDS
    scarce = {key: fields[key] for key in CORE_FIELDS}
    assert min(scarce.values()) >= MIN_CORE_FIELD_RECORDS, scarce
