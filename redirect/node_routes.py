"""Routes to the other nodes' pods (cluster mode): each remote node's pod
CIDR via that node's address, over the underlay (direct routing, as
Cilium's autoDirectNodeRoutes). Does I/O (netlink).

Our routes carry their own protocol number (ROUTE_PROTO), so a sync lists
and removes only what an agent put there, never a route an operator added,
and a restarted agent finds the previous one's routes and corrects them.
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from redirect.errors import PlumbingError

ROUTE_PROTO = 193  # "ciliate" in /etc/iproute2/rt_protos terms: an unassigned number


def _ipr(netns: str | None) -> IPRoute:
    return IPRoute(netns=netns) if netns else IPRoute()


def current(netns: str | None = None) -> dict[IPv4Network, IPv4Address]:
    """Our routes in the main table: pod CIDR -> gateway."""
    out: dict[IPv4Network, IPv4Address] = {}
    with _ipr(netns) as ipr:
        for r in ipr.get_routes(family=2, table=254, proto=ROUTE_PROTO):
            dst, gw = r.get_attr("RTA_DST"), r.get_attr("RTA_GATEWAY")
            if dst is not None and gw is not None:
                out[IPv4Network(f"{dst}/{r['dst_len']}")] = IPv4Address(gw)
    return out


def sync(routes: Mapping[IPv4Network, IPv4Address], netns: str | None = None) -> None:
    """Make our routes exactly `routes` (pod CIDR -> node address)."""
    have = current(netns)
    errors = []
    with _ipr(netns) as ipr:
        for net, gw in routes.items():
            if have.get(net) == gw:
                continue
            try:
                ipr.route("replace", dst=str(net), gateway=str(gw), proto=ROUTE_PROTO, table=254)
            except NetlinkError as exc:
                errors.append(f"{net} via {gw}: {exc.args[-1] if exc.args else exc}")
        for net, gw in have.items():
            if net in routes:
                continue
            try:
                ipr.route("del", dst=str(net), gateway=str(gw), proto=ROUTE_PROTO, table=254)
            except NetlinkError as exc:
                if exc.code != 3:  # ESRCH: already gone
                    errors.append(f"removing {net} via {gw}: {exc}")
    if errors:
        raise PlumbingError("routes to other nodes: " + "; ".join(errors))


def device_of(addr: IPv4Address, netns: str | None = None) -> str:
    """The name of the interface holding `addr` (the node's underlay address)."""
    with _ipr(netns) as ipr:
        for a in ipr.get_addr(family=2):
            if a.get_attr("IFA_ADDRESS") == str(addr):
                links = ipr.get_links(a["index"])
                if links:
                    return links[0].get_attr("IFLA_IFNAME")
    raise PlumbingError(f"no interface holds the node address {addr}")


def enable_forwarding(ifname: str) -> None:
    """Packets from other nodes to local pods are forwarded from this device
    (the pods' veths have it already: ciliate-cni turns it on there)."""
    path = f"/proc/sys/net/ipv4/conf/{ifname}/forwarding"
    try:
        with open(path, "w") as f:
            f.write("1")
    except OSError as exc:
        raise PlumbingError(f"enabling forwarding on {ifname}: {exc}") from exc
