"""Routes to the other nodes' pods (cluster mode): each remote node's pod
CIDRs (one per family) via that node's address, over the underlay (direct
routing, as Cilium's autoDirectNodeRoutes). Does I/O (netlink).

Our routes carry their own protocol number (ROUTE_PROTO), so a sync lists
and removes only what an agent put there, never a route an operator added,
and a restarted agent finds the previous one's routes and corrects them.
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from redirect.errors import PlumbingError

ROUTE_PROTO = 193  # "ciliate" in /etc/iproute2/rt_protos terms: an unassigned number
AF_INET, AF_INET6 = 2, 10


def _ipr(netns: str | None) -> IPRoute:
    return IPRoute(netns=netns) if netns else IPRoute()


Gateway = IPv4Address | IPv6Address
PodCidr = IPv4Network | IPv6Network


def current(netns: str | None = None) -> dict[PodCidr, Gateway]:
    """Our routes in the main table, both families: pod CIDR -> gateway."""
    out: dict[PodCidr, Gateway] = {}
    with _ipr(netns) as ipr:
        for family in (AF_INET, AF_INET6):
            for r in ipr.get_routes(family=family, table=254, proto=ROUTE_PROTO):
                dst, gw = r.get_attr("RTA_DST"), r.get_attr("RTA_GATEWAY")
                if dst is not None and gw is not None:
                    out[ip_network(f"{dst}/{r['dst_len']}")] = ip_address(gw)
    return out


def _route(gw: Gateway, net: PodCidr) -> dict:
    """Netlink arguments of the route to `net` via `gw` (same family: Linux
    takes an IPv6 next hop for an IPv4 route, never the reverse)."""
    return {"family": AF_INET6 if net.version == 6 else AF_INET, "gateway": str(gw)}


def sync(routes: Mapping[PodCidr, Gateway], netns: str | None = None) -> None:
    """Make our routes exactly `routes` (pod CIDR -> node address)."""
    have = current(netns)
    errors = []
    with _ipr(netns) as ipr:
        for net, gw in routes.items():
            if have.get(net) == gw:
                continue
            try:
                ipr.route("replace", dst=str(net), proto=ROUTE_PROTO, table=254, **_route(gw, net))
            except NetlinkError as exc:
                errors.append(f"{net} via {gw}: {exc.args[-1] if exc.args else exc}")
        for net, gw in have.items():
            if net in routes:
                continue
            try:
                ipr.route("del", dst=str(net), proto=ROUTE_PROTO, table=254, **_route(gw, net))
            except NetlinkError as exc:
                if exc.code != 3:  # ESRCH: already gone
                    errors.append(f"removing {net} via {gw}: {exc}")
    if errors:
        raise PlumbingError("routes to other nodes: " + "; ".join(errors))


def ipv6_of_device(addr: IPv4Address, netns: str | None = None) -> IPv6Address | None:
    """The first global IPv6 address on the interface holding `addr` (the
    node's IPv6 address on the underlay), or None."""
    with _ipr(netns) as ipr:
        index = next((a["index"] for a in ipr.get_addr(family=AF_INET) if a.get_attr("IFA_ADDRESS") == str(addr)), None)
        if index is None:
            return None
        for a in ipr.get_addr(family=AF_INET6, index=index):
            v6 = IPv6Address(a.get_attr("IFA_ADDRESS"))
            if a.get("scope", 0) == 0 and not v6.is_link_local:
                return v6
    return None


def device_of(addr: IPv4Address, netns: str | None = None) -> str:
    """The name of the interface holding `addr` (the node's underlay address)."""
    with _ipr(netns) as ipr:
        for a in ipr.get_addr(family=2):
            if a.get_attr("IFA_ADDRESS") == str(addr):
                links = ipr.get_links(a["index"])
                if links:
                    return links[0].get_attr("IFLA_IFNAME")
    raise PlumbingError(f"no interface holds the node address {addr}")


def enable_forwarding(ifname: str, ipv6: bool = False) -> None:
    """Packets from other nodes to local pods are forwarded from this device
    (the pods' veths have it already: ciliate-cni turns it on there)."""
    paths = [f"/proc/sys/net/ipv4/conf/{ifname}/forwarding"]
    if ipv6:
        paths.append(f"/proc/sys/net/ipv6/conf/{ifname}/forwarding")
    for path in paths:
        try:
            with open(path, "w") as f:
                f.write("1")
        except OSError as exc:
            raise PlumbingError(f"enabling forwarding on {ifname}: {exc}") from exc
