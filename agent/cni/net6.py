"""A pod's IPv6 wiring, both ends (see agent/cni/addressing.py for the choices).

Pod: IPv6 enabled on its interface (a runtime may disable it for new
devices, e.g. Docker without IPv6), the address as a /128 without duplicate
address detection, the link-local gateway pinned to the host veth's MAC,
and the default route through it. Host: IPv6 enabled and forwarding on the
host veth, the link-local gateway on it, the node's address on
ciliate_host, the /128 route to the pod, and the pod's MAC pinned in the
host's neighbour table. Neighbour discovery passes the datapath too (a
flushed table resolves again); the pinned entries spare each new pod its
first round trip and keep a pod from answering for another's address.

Forwarding between interfaces also needs the node's
net.ipv6.conf.all.forwarding=1, as IPv4 needs net.ipv4.ip_forward=1: the
node's setting, not each pod's. Does kernel I/O (netlink, sysctl).
"""

from __future__ import annotations

from ipaddress import IPv6Address

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from agent.cni import host_device, sysctl
from agent.cni.addressing import IPv6Plan
from agent.cni.errors import IO_FAILURE, CniError

AF_INET6 = 10


def enable_in_pod(netns: str, ifname: str) -> None:
    sysctl.write_in_netns(netns, [(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6", "0")])


def enable_on_host(host_if: str) -> None:
    sysctl.write(f"/proc/sys/net/ipv6/conf/{host_if}/disable_ipv6", "0")
    sysctl.write(f"/proc/sys/net/ipv6/conf/{host_if}/forwarding", "1")


def wire_pod(pod: IPRoute, idx: int, v6: IPv6Plan, host_mac: str) -> None:
    """The pod's side; its interface is up."""
    pod.addr("add", index=idx, address=str(v6.address), prefixlen=128, flags=IFA_F_NODAD)
    pod.neigh("replace", dst=str(v6.gateway), lladdr=host_mac, ifindex=idx, state="permanent")
    pod.route("replace", dst="::/0", gateway=str(v6.gateway), oif=idx)


def wire_host(ipr: IPRoute, host_idx: int, v6: IPv6Plan, pod_mac: str) -> None:
    """The host's side; the host veth is up and IPv6 is enabled on it."""
    ipr.addr("add", index=host_idx, address=str(v6.gateway), prefixlen=64, flags=IFA_F_NODAD)
    host_device.ensure_address(ipr, host_device.ensure_device(ipr), v6.host_address)
    ipr.route("replace", dst=f"{v6.address}/128", oif=host_idx, prefsrc=str(v6.host_address))
    ipr.neigh("replace", dst=str(v6.address), lladdr=pod_mac, ifindex=host_idx, state="permanent")


def check_pod(pod: IPRoute, idx: int, ifname: str, netns: str, address: IPv6Address) -> None:
    addrs = {a.get_attr("IFA_ADDRESS") for a in pod.get_addr(index=idx, family=AF_INET6)}
    if str(address) not in addrs:
        raise CniError(IO_FAILURE, f"{ifname} in {netns} does not hold {address} (has {', '.join(sorted(addrs)) or 'none'})")
