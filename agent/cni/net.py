"""Wiring a pod into the host with a veth pair (pyroute2), Cilium style.

The pod gets its address as a /32, a link route to the gateway and a default
route through it; the gateway's MAC is pinned in the pod's neighbour table to
the host-side veth, so no ARP proxying is needed. The host gets a /32 route to
the pod over the host-side veth, where the datapath attaches its programs.
The gateway address itself lives on the host device `ciliate_host` (a veth
pair with `ciliate_net`, as Cilium's cilium_host/cilium_net; the dummy driver
is not on every kernel), so the host and the sidecar Envoy have a source
address to reach pods from and pods' replies come back. Does kernel I/O
(netlink, sysctl).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.cni.errors import CONTAINER_UNKNOWN, IO_FAILURE, CniError

ENOENT = 2
ENODEV = 19
EEXIST = 17
HOST_DEVICE = "ciliate_host"
HOST_PEER = "ciliate_net"


@dataclass(frozen=True, slots=True)
class Wired:
    host_ifname: str
    host_mac: str
    pod_mac: str
    address: IPv4Interface


def _check_netns(netns: str) -> None:
    if not Path(netns).exists():
        raise CniError(CONTAINER_UNKNOWN, f"network namespace {netns} does not exist (is the container still running?)")


def _sysctl(path: str, value: str) -> None:
    try:
        Path(path).write_text(value)
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot set {path} to {value}: {exc}") from exc


def _ensure_gateway(ipr: IPRoute, gateway: IPv4Address) -> None:
    if not ipr.link_lookup(ifname=HOST_DEVICE):
        try:
            ipr.link("add", ifname=HOST_DEVICE, kind="veth", peer=HOST_PEER)
        except NetlinkError as exc:
            if exc.code != EEXIST:  # a concurrent ADD made it
                raise
    idx = ipr.link_lookup(ifname=HOST_DEVICE)[0]
    have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx, family=2)}
    if str(gateway) not in have:
        try:
            ipr.addr("add", index=idx, address=str(gateway), prefixlen=32)
        except NetlinkError as exc:
            if exc.code != EEXIST:
                raise
    ipr.link("set", index=idx, state="up")
    for peer in ipr.link_lookup(ifname=HOST_PEER):
        ipr.link("set", index=peer, state="up")


def add(netns: str, ifname: str, host_if: str, address: IPv4Address, gateway: IPv4Address, mtu: int | None) -> Wired:
    _check_netns(netns)
    tmp_peer = "tmp" + host_if[3:]
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
        _sysctl(f"/proc/sys/net/ipv4/conf/{host_if}/forwarding", "1")
        with IPRoute(netns=netns) as pod:
            idx = pod.link_lookup(ifname=tmp_peer)[0]
            pod.link("set", index=idx, ifname=ifname)
            pod.addr("add", index=idx, address=str(address), prefixlen=32)
            pod.link("set", index=idx, state="up")
            lo = pod.link_lookup(ifname="lo")
            if lo:
                pod.link("set", index=lo[0], state="up")
            pod_mac = pod.get_links(idx)[0].get_attr("IFLA_ADDRESS")
            pod.neigh("replace", dst=str(gateway), lladdr=host_mac, ifindex=idx, state="permanent")
            pod.route("replace", dst=f"{gateway}/32", oif=idx, scope="link")
            pod.route("replace", dst="0.0.0.0/0", gateway=str(gateway), oif=idx)
        with IPRoute() as ipr:
            _ensure_gateway(ipr, gateway)
            ipr.route("replace", dst=f"{address}/32", oif=host_idx, scope="link", prefsrc=str(gateway))
    except NetlinkError as exc:
        remove(host_if)
        raise CniError(IO_FAILURE, f"wiring {ifname} into {netns} failed: {exc}") from exc
    return Wired(host_if, host_mac, pod_mac, IPv4Interface(f"{address}/32"))


def remove(host_if: str) -> bool:
    """Delete the veth pair (its pod end goes with it); False when it was already gone."""
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


def check(netns: str, ifname: str, address: IPv4Address, host_if: str) -> None:
    _check_netns(netns)
    with IPRoute() as ipr:
        if not ipr.link_lookup(ifname=host_if):
            raise CniError(IO_FAILURE, f"host interface {host_if} is missing")
    with IPRoute(netns=netns) as pod:
        idx = pod.link_lookup(ifname=ifname)
        if not idx:
            raise CniError(IO_FAILURE, f"interface {ifname} is missing in {netns}")
        addrs = {a.get_attr("IFA_ADDRESS") for a in pod.get_addr(index=idx[0], family=2)}
        if str(address) not in addrs:
            raise CniError(IO_FAILURE, f"{ifname} in {netns} does not hold {address} (has {', '.join(sorted(addrs)) or 'none'})")
