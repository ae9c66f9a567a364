"""The node's own interface addresses, read from the kernel for the `host`
identity (which of them count: agent/core/addresses.py).

IPv4 through netlink (a node has a few). IPv6 from /proc/net/if_inet6, one
text line per address with its scope: the host side of every veth carries
an IPv6 link-local address, so a netlink dump is one message per pod (each
a cyclic object tree for the collector), and it was read on every
regeneration that brought an endpoint, to be thrown away. Link-local ones
never count, so they are skipped before anything is built. Reads the
network namespace of the calling process.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

from agent.core.addresses import host_addresses

IF_INET6 = Path("/proc/net/if_inet6")
SCOPE_LINK = 0x20  # IFA scope RT_SCOPE_LINK as /proc/net/if_inet6 prints it


def ipv6_from_if_inet6(text: str) -> list[IPv6Address]:
    """Every address of /proc/net/if_inet6 but the link-local ones. A line:
    address (32 hex digits), ifindex, prefix length, scope, flags, name."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or len(fields[0]) != 32 or int(fields[3], 16) == SCOPE_LINK:
            continue
        out.append(IPv6Address(bytes.fromhex(fields[0])))
    return out


def read_host_ips(if_inet6: Path = IF_INET6) -> list[IPv4Address | IPv6Address]:
    """The addresses the ipcache maps to `host`, both families."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found: list[IPv4Address | IPv6Address] = [ip_address(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(family=2)]
    try:
        found += ipv6_from_if_inet6(if_inet6.read_text())
    except FileNotFoundError:
        pass  # IPv6 off in this kernel or namespace: no IPv6 address
    return host_addresses(found)
