"""What the pod gets of each family, decided before anything is wired. Pure.

IPv4, as before dual-stack: the address as a /32; the range's gateway (the
IPAM plugin's, else the range's first host) lives on `ciliate_host`, and the
pod reaches it over a link route with its MAC pinned to the host veth's.

IPv6: the address as a /128 (no on-link prefix: everything goes through the
host, as for IPv4), usable at once (no duplicate address detection: the
address is the pod's alone, IPAM says so, and DAD would leave it tentative,
unusable, for a second or more). The pod's next hop is the link-local
LINK_LOCAL_GATEWAY on its host veth, pinned in the pod's neighbour table to
the host veth's MAC, so no neighbour discovery is needed (the datapath
passes it too: a pod that flushes the entry resolves again). Link-local, not the range's
gateway: an IPv6 next hop is link-local by convention (RFC 4861 routers
advertise theirs so), and one constant on every veth needs no on-link route
for the pod's prefix. Cilium instead routes via its router's global address
and answers neighbour solicitations for it in its programs. The range's gateway still goes on `ciliate_host` as the
node's source address toward pods (the host route names it), as for IPv4.

IPv6-only (a result with no IPv4 address): the pod gets only its IPv6 wiring,
and the endpoint is registered without an IPv4 address; the datapath
enforces it by its IPv6 address (on a node with IPv6 disabled it keeps the
veth dropping everything: agent/adapters/kernel_datapath.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from agent.cni.errors import INVALID_CONFIG, CniError
from agent.cni.ipam import IpamResult
from agent.core.addresses import ipv6_problem

LINK_LOCAL_GATEWAY = IPv6Address("fe80::1")
IPV6_MIN_MTU = 1280  # RFC 8200; the kernel turns IPv6 off on a device with a smaller MTU


@dataclass(frozen=True, slots=True)
class IPv4Plan:
    address: IPv4Address
    gateway: IPv4Address  # on ciliate_host; the pod's next hop


@dataclass(frozen=True, slots=True)
class IPv6Plan:
    address: IPv6Address
    host_address: IPv6Address  # on ciliate_host: the node's source address toward pods
    gateway: IPv6Address = LINK_LOCAL_GATEWAY  # on the host veth; the pod's next hop


@dataclass(frozen=True, slots=True)
class Plan:
    ipv4: IPv4Plan | None
    ipv6: IPv6Plan | None


def plan(ipam: IpamResult, mtu: int | None = None) -> Plan:
    """`mtu`: the network configuration's, which the veth gets."""
    v4 = v6 = None
    if ipam.ipv4 is not None:
        iface = ipam.ipv4.interface
        gw = ipam.ipv4.gateway or next(iface.network.hosts())
        v4 = IPv4Plan(IPv4Address(iface.ip), IPv4Address(gw))
    if ipam.ipv6 is not None:
        iface = ipam.ipv6.interface
        addr = IPv6Address(iface.ip)
        problem = ipv6_problem(addr)
        if problem:
            raise CniError(INVALID_CONFIG, f"the IPAM plugin's IPv6 address cannot be a pod's: {problem}")
        host = IPv6Address(ipam.ipv6.gateway) if ipam.ipv6.gateway else next(iter(iface.network.hosts()), addr)
        if host == addr:
            raise CniError(
                INVALID_CONFIG,
                f"the IPv6 range {iface.network} gives the pod {addr} and no other address for the node: "
                "set the range's gateway, or give it a larger subnet",
            )
        if mtu is not None and mtu < IPV6_MIN_MTU:
            raise CniError(INVALID_CONFIG, f"mtu {mtu} is below IPv6's minimum of {IPV6_MIN_MTU}, and the IPAM plugin gave the pod an IPv6 address")
        v6 = IPv6Plan(addr, host)
    return Plan(v4, v6)
