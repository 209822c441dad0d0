"""The lab's network: Linux network namespaces joined by veth pairs.

::

    workstation ─eth0──inside0─┐
    10.77.0.10                 br0 router ─outside0──eth0─ outside host
    collector ───eth0─────col0─┘ 10.77.0.1   203.0.113.1     203.0.113.10
    10.77.0.2

The router bridges the inside segment (workstation and collector) and
forwards between it and the outside host, as the docker-compose lab's router
container does on its two networks; the addresses are the same in both labs.
Every interface is created inside a lab namespace (``ip -n``), and every route
is a route inside a lab namespace to a lab address, so nothing is added to,
routed through or configured in the namespace the lab is started from:
whatever the lab sends stays inside the namespaces it made.  203.0.113.0/24 is
a documentation range (RFC 5737) that exists here only inside the lab.

Namespaces are named ``ftlab-<pid>-<role>``, the pid being the lab process's;
``clean_stale`` removes those whose lab process is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

PREFIX = "ftlab-"

WORKSTATION = "10.77.0.10"
COLLECTOR = "10.77.0.2"
ROUTER_INSIDE = "10.77.0.1"
ROUTER_OUTSIDE = "203.0.113.1"
OUTSIDE = "203.0.113.10"

INSIDE_NET = "10.77.0.0/24"
OUTSIDE_NET = "203.0.113.0/24"

#: The workstation's interface, where the exporter captures (``eth0`` in compose too).
CAPTURE_INTERFACE = "eth0"

ROLES = ("ws", "rtr", "out", "col")

_NAME = re.compile(rf"^{PREFIX}(?P<pid>\d+)-(?P<role>[a-z]+)$")

#: Debian installs ip in /usr/sbin (or /sbin), which a non-root PATH may lack.
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


class LabNetworkError(RuntimeError):
    """A namespace, link, address or route could not be set up."""


@dataclass(frozen=True)
class Link:
    """One veth pair: each end's namespace role, interface and address (if any)."""

    role_a: str
    device_a: str
    address_a: str | None
    role_b: str
    device_b: str
    address_b: str | None


#: The router's ends of the inside links are bridge ports, so they carry no address.
LINKS = (
    Link("ws", CAPTURE_INTERFACE, f"{WORKSTATION}/24", "rtr", "inside0", None),
    Link("col", "eth0", f"{COLLECTOR}/24", "rtr", "col0", None),
    Link("out", "eth0", f"{OUTSIDE}/24", "rtr", "outside0", f"{ROUTER_OUTSIDE}/24"),
)

BRIDGE = "br0"
BRIDGE_PORTS = ("inside0", "col0")

#: Routes per role: (destination, gateway), each to a lab network via the router.
ROUTES = {
    "ws": ((OUTSIDE_NET, ROUTER_INSIDE),),
    "out": ((INSIDE_NET, ROUTER_OUTSIDE),),
}


def ip_command() -> str:
    """Return the path of iproute2's ``ip``, or raise if it is not installed."""
    found = shutil.which("ip") or shutil.which("ip", path=_SBIN)
    if found is None:
        raise LabNetworkError("ip is not installed (apt-get install iproute2)")
    return found


def _ip(*args: str) -> str:
    """Run ``ip`` with ``args``; return its output or raise with its message."""
    done = subprocess.run(
        [ip_command(), *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise LabNetworkError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


class Topology:
    """Create the lab's namespaces, links and routes, and delete them again."""

    def __init__(self, owner: int | None = None):
        """Name the namespaces after ``owner`` (this process by default)."""
        self.owner = os.getpid() if owner is None else owner
        self.created: list[str] = []

    def name(self, role: str) -> str:
        """Return the namespace name of ``role`` (ws, rtr, out or col)."""
        return f"{PREFIX}{self.owner}-{role}"

    def wrap(self, role: str, command: Sequence[str]) -> list[str]:
        """Return ``command`` prefixed so that it runs in ``role``'s namespace."""
        return [ip_command(), "netns", "exec", self.name(role), *command]

    def build(self) -> None:
        """Create every namespace, link, address and route; forward on the router."""
        for role in ROLES:
            # Recorded first: an interruption between the two still tears it down.
            self.created.append(self.name(role))
            _ip("netns", "add", self.name(role))
            _ip("-n", self.name(role), "link", "set", "lo", "up")

        for link in LINKS:
            ns_a, ns_b = self.name(link.role_a), self.name(link.role_b)
            # Created in ns_a with its peer placed straight into ns_b: neither
            # end ever exists in the namespace the lab was started from.
            _ip("-n", ns_a, "link", "add", link.device_a, "type", "veth",
                "peer", "name", link.device_b, "netns", ns_b)  # fmt: skip
            for ns, device, address in (
                (ns_a, link.device_a, link.address_a),
                (ns_b, link.device_b, link.address_b),
            ):
                if address is not None:
                    _ip("-n", ns, "addr", "add", address, "dev", device)
                _ip("-n", ns, "link", "set", device, "up")

        router = self.name("rtr")
        _ip("-n", router, "link", "add", BRIDGE, "type", "bridge")
        for port in BRIDGE_PORTS:
            _ip("-n", router, "link", "set", port, "master", BRIDGE)
        _ip("-n", router, "addr", "add", f"{ROUTER_INSIDE}/24", "dev", BRIDGE)
        _ip("-n", router, "link", "set", BRIDGE, "up")

        for role, routes in ROUTES.items():
            for destination, gateway in routes:
                _ip("-n", self.name(role), "route", "add", destination, "via", gateway)

        # net.ipv4.ip_forward is per namespace: this turns it on in the router only.
        done = subprocess.run(
            self.wrap("rtr", ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]),
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise LabNetworkError(f"router ip_forward: {done.stderr.strip()}")

    def teardown(self) -> list[str]:
        """Stop whatever still runs in the lab namespaces and delete them."""
        removed = []
        for name in reversed(self.created):
            remove_namespace(name)
            removed.append(name)
        self.created.clear()
        return removed


def remove_namespace(name: str) -> None:
    """Kill the processes left in a lab namespace, then delete it.

    Deleting a namespace only unmounts its name: a process still inside keeps
    the network alive, so those processes (all started by a lab) go first.
    Deleting the namespace destroys its veth ends and with them their peers.
    """
    if not name.startswith(PREFIX):
        raise ValueError(f"{name} is not a lab namespace")
    for pid in namespace_pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    try:
        _ip("netns", "delete", name)
    except LabNetworkError:
        if name in lab_namespaces():
            raise


def namespace_pids(name: str) -> list[int]:
    """Return the processes inside namespace ``name`` (none if it is gone)."""
    try:
        return [int(pid) for pid in _ip("netns", "pids", name).split()]
    except LabNetworkError:
        return []


def lab_namespaces() -> list[str]:
    """Return the names of every lab namespace on this machine."""
    names = [line.split()[0] for line in _ip("netns", "list").splitlines() if line]
    return [name for name in names if _NAME.match(name)]


def _alive(pid: int) -> bool:
    """Return True if process ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(everything: bool = False) -> list[str]:
    """Remove lab namespaces whose lab process is gone (all of them if told).

    A lab killed with SIGKILL, or a crashed machine session, leaves its
    namespaces behind; a running lab's namespaces are left alone.
    """
    removed = []
    for name in lab_namespaces():
        match = _NAME.match(name)
        assert match is not None
        if not everything and _alive(int(match.group("pid"))):
            continue
        remove_namespace(name)
        removed.append(name)
    return removed
