"""Information-element registry: names and abstract types by element id.

The IANA table comes from the ``netflow`` package, so flowtrap names every element
the way IPFIX does (camelCase) for v9 and IPFIX alike; NetFlow v9 ids 1-127 are the
same elements (RFC 3954 §8, RFC 7012 §4). Ids that only Cisco's v9 documents use fall
back to the ``netflow`` package's v9 table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cache

from netflow.ipfix import IPFIXFieldTypes
from netflow.v9 import V9_FIELD_TYPES


class Kind(enum.Enum):
    """How the bytes of one field turn into a value."""

    UNSIGNED = "unsigned"
    SIGNED = "signed"
    FLOAT = "float"
    IPV4 = "ipv4"
    IPV6 = "ipv6"
    MAC = "mac"
    STRING = "string"
    BYTES = "bytes"


_KIND_BY_TYPE = {
    "unsigned8": Kind.UNSIGNED,
    "unsigned16": Kind.UNSIGNED,
    "unsigned32": Kind.UNSIGNED,
    "unsigned64": Kind.UNSIGNED,
    "signed8": Kind.SIGNED,
    "signed16": Kind.SIGNED,
    "signed32": Kind.SIGNED,
    "signed64": Kind.SIGNED,
    "float32": Kind.FLOAT,
    "float64": Kind.FLOAT,
    "boolean": Kind.UNSIGNED,
    "dateTimeSeconds": Kind.UNSIGNED,
    "dateTimeMilliseconds": Kind.UNSIGNED,
    # RFC 7011 §6.1.9-10: NTP format, 32 bits of seconds then 32 bits of fraction;
    # kept as one 64-bit integer and split by the time normaliser.
    "dateTimeMicroseconds": Kind.UNSIGNED,
    "dateTimeNanoseconds": Kind.UNSIGNED,
    "ipv4Address": Kind.IPV4,
    "ipv6Address": Kind.IPV6,
    "macAddress": Kind.MAC,
    "string": Kind.STRING,
}

# Early Cisco ASA NSEL ids: the same meaning as the IANA elements named here.
_ASA_LEGACY = {
    40001: ("postNATSourceIPv4Address", Kind.IPV4),
    40002: ("postNATDestinationIPv4Address", Kind.IPV4),
    40003: ("postNAPTSourceTransportPort", Kind.UNSIGNED),
    40004: ("postNAPTDestinationTransportPort", Kind.UNSIGNED),
    40005: ("firewallEvent", Kind.UNSIGNED),
}

# Cisco's v9 documents name these ids; IANA either leaves them unassigned or gives
# them another meaning only in IPFIX. Only ids absent from the IANA table use them.
_V9_ONLY_KINDS = {
    33000: Kind.UNSIGNED,
    33001: Kind.UNSIGNED,
    33002: Kind.UNSIGNED,
    40000: Kind.STRING,
    56701: Kind.STRING,
    56702: Kind.STRING,
}


@dataclass(frozen=True, slots=True)
class Element:
    """One information element as flowtrap knows it."""

    name: str
    kind: Kind


# RFC 5103 bidirectional flow export: enterprise 29305 marks reverse elements.
REVERSE_PEN = 29305

# Vendor elements seen in real exports, by (enterprise number, element id).
# Unlisted enterprise elements keep their bytes under "e<PEN>.<id>".
_VENDOR = {
    # VMware vSphere Distributed Switch (PEN 6876): the tenant (inner) flow
    # of VXLAN traffic and interface attributes.
    (6876, 880): Element("vmwareTenantProtocol", Kind.UNSIGNED),
    (6876, 881): Element("vmwareTenantSourceIPv4", Kind.IPV4),
    (6876, 882): Element("vmwareTenantDestIPv4", Kind.IPV4),
    (6876, 883): Element("vmwareTenantSourceIPv6", Kind.IPV6),
    (6876, 884): Element("vmwareTenantDestIPv6", Kind.IPV6),
    (6876, 886): Element("vmwareTenantSourcePort", Kind.UNSIGNED),
    (6876, 887): Element("vmwareTenantDestPort", Kind.UNSIGNED),
    (6876, 888): Element("vmwareEgressInterfaceAttr", Kind.UNSIGNED),
    (6876, 889): Element("vmwareVxlanExportRole", Kind.UNSIGNED),
    (6876, 890): Element("vmwareIngressInterfaceAttr", Kind.UNSIGNED),
    # Juniper (PEN 2636): the common-properties id of MX inline monitoring.
    (2636, 137): Element("juniperCommonPropertiesId", Kind.UNSIGNED),
}


_IANA = {fid: (name, typ) for fid, name, typ in IPFIXFieldTypes.iana_field_types}


# RFC 3954 §6.1: the scope field types of a v9 options template, which share
# numbers with ordinary elements but mean something else.
V9_SCOPE = -1
_V9_SCOPE_NAMES = {
    1: "scopeSystem",
    2: "scopeInterface",
    3: "scopeLineCard",
    4: "scopeCache",
    5: "scopeTemplate",
}


@cache
def lookup(element_id: int, enterprise: int = 0) -> Element:
    """Return the element for an id, naming unknown ones by number."""
    if enterprise == V9_SCOPE:
        name = _V9_SCOPE_NAMES.get(element_id, f"scope{element_id}")
        return Element(name, Kind.UNSIGNED)
    if enterprise == REVERSE_PEN:
        # RFC 5103 §6.1: the reverse direction of an IANA element, same type.
        forward = lookup(element_id)
        if not forward.name.startswith("field"):
            name = "reverse" + forward.name[0].upper() + forward.name[1:]
            return Element(name, forward.kind)
    if enterprise:
        vendor = _VENDOR.get((enterprise, element_id))
        if vendor is not None:
            return vendor
        return Element(f"e{enterprise}.{element_id}", Kind.BYTES)

    iana = _IANA.get(element_id)
    if iana is not None and iana[1] != "" and iana[0] != "Reserved":
        return Element(iana[0], _KIND_BY_TYPE.get(iana[1], Kind.BYTES))

    legacy = _ASA_LEGACY.get(element_id)
    if legacy is not None:
        return Element(*legacy)

    v9_name = V9_FIELD_TYPES.get(element_id)
    if v9_name is not None and element_id != 0:
        return Element(v9_name, _V9_ONLY_KINDS.get(element_id, Kind.BYTES))

    return Element(f"field{element_id}", Kind.BYTES)
