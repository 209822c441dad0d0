"""The exporter allowlist: which source addresses may send export packets."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from detectors.networks import IPNetwork

# Addresses whose verdict is remembered; past this the memory starts over. Each
# entry costs about 150 bytes, and a flood of spoofed sources cannot grow it.
_CACHE_SIZE = 65_536


class Allowlist:
    """Decides, per source address, whether a datagram is accepted."""

    def __init__(self, networks: Iterable[IPNetwork | str]) -> None:
        """Parse the networks once."""
        self.networks = tuple(ipaddress.ip_network(net) for net in networks)
        self._verdicts: dict[str, bool] = {}

    def permits(self, address: str) -> bool:
        """Return True when ``address`` lies in an allowed network."""
        verdict = self._verdicts.get(address)
        if verdict is None:
            verdict = self._check(address)
            if len(self._verdicts) >= _CACHE_SIZE:
                self._verdicts.clear()
            self._verdicts[address] = verdict
        return verdict

    def _check(self, address: str) -> bool:
        """Test an address against every network."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self.networks)

    def __str__(self) -> str:
        """List the networks."""
        return ",".join(str(net) for net in self.networks)
