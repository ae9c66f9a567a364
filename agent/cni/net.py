"""Wiring a pod into the host with a veth pair (pyroute2), Cilium style.

IPv4: the pod gets its address as a /32, a link route to the gateway and a
default route through it; the gateway's MAC is pinned in the pod's
neighbour table to the host-side veth, so no ARP proxying is needed. The
host gets a /32 route to the pod over the host-side veth, where the datapath
attaches its programs. The gateway address itself lives on the host device
`ciliate_host` (host_device.py). IPv6, when the pod has an address of that
family, is net6.py's; a pod may have either family or both
(agent/cni/addressing.py). Does kernel I/O (netlink, sysctl).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.cni import host_device, net6, sysctl
from agent.cni.addressing import IPv4Plan, Plan
from agent.cni.errors import CONTAINER_UNKNOWN, IO_FAILURE, CniError

ENOENT = 2
ENODEV = 19
AF_INET = 2


@dataclass(frozen=True, slots=True)
class Wired:
    host_ifname: str
    host_mac: str
    pod_mac: str
    ipv4: IPv4Interface | None
    ipv6: IPv6Interface | None


def _check_netns(netns: str) -> None:
    if not Path(netns).exists():
        raise CniError(CONTAINER_UNKNOWN, f"network namespace {netns} does not exist (is the container still running?)")


def _wire_pod_ipv4(pod: IPRoute, idx: int, v4: IPv4Plan, host_mac: str) -> None:
    pod.neigh("replace", dst=str(v4.gateway), lladdr=host_mac, ifindex=idx, state="permanent")
    pod.route("replace", dst=f"{v4.gateway}/32", oif=idx, scope="link")
    pod.route("replace", dst="0.0.0.0/0", gateway=str(v4.gateway), oif=idx)


def add(netns: str, ifname: str, host_if: str, plan: Plan, mtu: int | None) -> Wired:
    _check_netns(netns)
    tmp_peer = "tmp" + host_if[3:]
    v4, v6 = plan.ipv4, plan.ipv6
    try:
        with IPRoute() as ipr:
            # A retried ADD finds the veth of the failed attempt: start over.
            for stale in ipr.link_lookup(ifname=host_if):
                ipr.link("del", index=stale)
            kw = {"mtu": mtu} if mtu else {}
            ipr.link("add", ifname=host_if, kind="veth", peer={"ifname": tmp_peer, **kw}, **kw)
            host_idx = ipr.link_lookup(ifname=host_if)[0]
            peer_idx = ipr.link_lookup(ifname=tmp_peer)[0]
            host_mac = ipr.get_links(host_idx)[0].get_attr("IFLA_ADDRESS")
            ipr.link("set", index=peer_idx, net_ns_fd=netns)
            ipr.link("set", index=host_idx, state="up")
        if v4 is not None:
            sysctl.write(f"/proc/sys/net/ipv4/conf/{host_if}/forwarding", "1")
        if v6 is not None:
            net6.enable_on_host(host_if)
        with IPRoute(netns=netns) as pod:
            idx = pod.link_lookup(ifname=tmp_peer)[0]
            pod.link("set", index=idx, ifname=ifname)
            if v6 is not None:
                net6.enable_in_pod(netns, ifname)  # before its address: a device without IPv6 refuses one
            if v4 is not None:
                pod.addr("add", index=idx, address=str(v4.address), prefixlen=32)
            pod.link("set", index=idx, state="up")
            lo = pod.link_lookup(ifname="lo")
            if lo:
                pod.link("set", index=lo[0], state="up")
            pod_mac = pod.get_links(idx)[0].get_attr("IFLA_ADDRESS")
            if v4 is not None:
                _wire_pod_ipv4(pod, idx, v4, host_mac)
            if v6 is not None:
                net6.wire_pod(pod, idx, v6, host_mac)
        with IPRoute() as ipr:
            if v4 is not None:
                host_device.ensure_address(ipr, host_device.ensure_device(ipr), v4.gateway)
                ipr.route("replace", dst=f"{v4.address}/32", oif=host_idx, scope="link", prefsrc=str(v4.gateway))
            if v6 is not None:
                net6.wire_host(ipr, host_idx, v6, pod_mac)
    except (NetlinkError, CniError) as exc:
        remove(host_if)
        if isinstance(exc, CniError):
            raise
        raise CniError(IO_FAILURE, f"wiring {ifname} into {netns} failed: {exc}") from exc
    return Wired(
        host_if, host_mac, pod_mac,
        IPv4Interface(f"{v4.address}/32") if v4 is not None else None,
        IPv6Interface(f"{v6.address}/128") if v6 is not None else None,
    )


def remove(host_if: str) -> bool:
    """Delete the veth pair (its pod end, the routes and neighbour entries
    through it go with it); False when it was already gone."""
    try:
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=host_if)
            if not idx:
                return False
            ipr.link("del", index=idx[0])
            return True
    except NetlinkError as exc:
        if exc.code in (ENOENT, ENODEV):
            return False
        raise CniError(IO_FAILURE, f"deleting {host_if} failed: {exc}") from exc


def check(netns: str, ifname: str, host_if: str, ipv4: IPv4Address | None, ipv6: IPv6Address | None) -> None:
    _check_netns(netns)
    with IPRoute() as ipr:
        if not ipr.link_lookup(ifname=host_if):
            raise CniError(IO_FAILURE, f"host interface {host_if} is missing")
    with IPRoute(netns=netns) as pod:
        idx = pod.link_lookup(ifname=ifname)
        if not idx:
            raise CniError(IO_FAILURE, f"interface {ifname} is missing in {netns}")
        if ipv4 is not None:
            addrs = {a.get_attr("IFA_ADDRESS") for a in pod.get_addr(index=idx[0], family=AF_INET)}
            if str(ipv4) not in addrs:
                raise CniError(IO_FAILURE, f"{ifname} in {netns} does not hold {ipv4} (has {', '.join(sorted(addrs)) or 'none'})")
        if ipv6 is not None:
            net6.check_pod(pod, idx[0], ifname, netns, ipv6)
