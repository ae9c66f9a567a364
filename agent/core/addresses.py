"""Which addresses an endpoint may hold, per family: one rule the API, the
CNI plugin and the persisted records share. Pure.

An endpoint's IPv6 address is what other pods and the outside world reach it
at, and what the datapath will key it by: only a global unicast (2000::/3)
or a unique local (fc00::/7) address can be that. A link-local address
(fe80::/10) is the same on every veth and means nothing beyond the link;
multicast, loopback, the unspecified address, IPv4-mapped and the other
reserved blocks are not an interface's address at all. A zone (`%eth0`)
only qualifies a link-local address, so it is refused too.

The node's own addresses that join the `host` identity follow from the same
reasoning (`host_addresses`).
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address, IPv6Network

GLOBAL_UNICAST = IPv6Network("2000::/3")
UNIQUE_LOCAL = IPv6Network("fc00::/7")


def _kind(addr: IPv6Address) -> str:
    if addr.is_link_local:
        return "a link-local"
    if addr.is_multicast:
        return "a multicast"
    if addr.is_loopback:
        return "the loopback"
    if addr.is_unspecified:
        return "the unspecified"
    if addr.ipv4_mapped is not None:
        return "an IPv4-mapped"
    if addr.is_site_local:
        return "a (deprecated) site-local"
    return "a reserved"


def ipv6_problem(addr: IPv6Address) -> str | None:
    """Why `addr` cannot be an endpoint's IPv6 address, or None when it can."""
    if addr.scope_id:
        return f"{addr} carries a zone (%{addr.scope_id}); give the address alone"
    if addr in GLOBAL_UNICAST or addr in UNIQUE_LOCAL:
        return None
    return f"{addr} is {_kind(addr)} address; an endpoint's IPv6 address must be global unicast (2000::/3) or unique local (fc00::/7)"



def host_addresses(addrs: Iterable[IPv4Address | IPv6Address]) -> list[IPv4Address | IPv6Address]:
    """The node's interface addresses that the ipcache maps to `host`, both
    families, IPv4 first. Loopback is left out (127/8 and ::1 never reach a
    pod's datapath as a peer), and so is IPv6 link-local: an ipcache key has
    no zone, and one fe80:: address sits on many links at once (the host
    side of every veth may carry the same one), so as a /128 it would name
    no single interface; a pod reaches the node by its global or unique
    local addresses, which are kept."""
    keep = {a for a in addrs if not a.is_loopback and not (a.version == 6 and a.is_link_local)}
    return sorted(keep, key=lambda a: (a.version, a))
