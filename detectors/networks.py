"""Internal versus external, from an explicit list of networks.

Python's ``is_private`` and ``is_global`` are not used: they call the
documentation ranges (192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32)
private, which would hide traffic to them.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from collections.abc import Iterable
from functools import lru_cache

from schemas.config import DEFAULT_INTERNAL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


_LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")

# Distinct addresses seen in flows; each cache entry costs about 200 bytes.
_CACHE_SIZE = 65_536


@lru_cache(maxsize=_CACHE_SIZE)
def text(address: IPAddress) -> str:
    """Return an address as text (cached: flows repeat addresses)."""
    return str(address)


def _unmapped(address: IPAddress) -> IPAddress:
    """Return the IPv4 address inside an IPv4-mapped IPv6 one (::ffff:a.b.c.d)."""
    if address.version == 6:
        mapped = address.ipv4_mapped
        if mapped is not None:
            return mapped
    return address


class _Spans:
    """Networks of one IP version as merged integer spans, searched by bisection.

    Testing an address against each network in turn cost about a microsecond
    per network for every address not seen before.
    """

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        """Merge the networks' address ranges."""
        merged: list[list[int]] = []
        for low, high in sorted(
            (int(net.network_address), int(net.broadcast_address)) for net in networks
        ):
            if merged and low <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], high)
            else:
                merged.append([low, high])
        self.starts = [low for low, _ in merged]
        self.ends = [high for _, high in merged]

    def __contains__(self, value: int) -> bool:
        """Return True when an address (as an integer) lies in a span."""
        index = bisect_right(self.starts, value) - 1
        return index >= 0 and value <= self.ends[index]


class Networks:
    """Classifies addresses as internal or external by a list of networks."""

    def __init__(self, internal: Iterable[IPNetwork | str] = DEFAULT_INTERNAL):
        """Parse the internal networks once."""
        self._set(internal)
        self.is_internal = lru_cache(maxsize=_CACHE_SIZE)(self._is_internal)
        self.is_external_unicast = lru_cache(maxsize=_CACHE_SIZE)(
            self._is_external_unicast
        )
        self.is_internal_unicast = lru_cache(maxsize=_CACHE_SIZE)(
            self._is_internal_unicast
        )

    def replace(self, internal: Iterable[IPNetwork | str]) -> None:
        """Change the internal networks in place (SIGHUP); detectors keep state."""
        self._set(internal)
        self.is_internal.cache_clear()
        self.is_external_unicast.cache_clear()
        self.is_internal_unicast.cache_clear()

    def _set(self, internal: Iterable[IPNetwork | str]) -> None:
        """Parse the internal networks and index them by version."""
        self.internal = tuple(ipaddress.ip_network(net) for net in internal)
        self._spans = {
            version: _Spans(net for net in self.internal if net.version == version)
            for version in (4, 6)
        }

    def _is_internal(self, address: IPAddress) -> bool:
        """Return True when the address lies in an internal network."""
        address = _unmapped(address)
        return int(address) in self._spans[address.version]

    def _is_external_unicast(self, address: IPAddress) -> bool:
        """Return True for an external address that names one host."""
        address = _unmapped(address)
        return not (
            self.is_internal(address)
            or address.is_multicast
            or address.is_unspecified
            or address.is_loopback
            or address == _LIMITED_BROADCAST
            # 240.0.0.0/4 is reserved and never routed (RFC 1112 §4).
            or (address.version == 4 and address.is_reserved)
        )

    def _is_internal_unicast(self, address: IPAddress) -> bool:
        """Return True for an internal address that could name one host."""
        address = _unmapped(address)
        return (
            self.is_internal(address)
            and not address.is_multicast
            and not address.is_unspecified
            and not self.is_directed_broadcast(address)
        )

    def is_directed_broadcast(self, address: IPAddress) -> bool:
        """Return True for the broadcast address of an internal IPv4 network."""
        if address.version != 4:
            return False
        return any(
            net.version == 4 and net.prefixlen < 31 and address == net.broadcast_address
            for net in self.internal
        )
