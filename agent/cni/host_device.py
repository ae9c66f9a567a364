"""The node's side of every pod's gateway: the host device `ciliate_host`.

A veth pair with `ciliate_net`, as Cilium's cilium_host/cilium_net (the
dummy driver is not on every kernel). It holds each range's gateway address
(IPv4) and the IPv6 range's node address, so the host and the sidecar Envoy
have a source address to reach pods from and the pods' replies come back.
Made by whichever ADD needs it first; concurrent ADDs may race to make it.
Does kernel I/O (netlink).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from agent.cni import sysctl

EEXIST = 17
HOST_DEVICE = "ciliate_host"
HOST_PEER = "ciliate_net"


def ensure_device(ipr: IPRoute) -> int:
    """The device's index, made and up."""
    if not ipr.link_lookup(ifname=HOST_DEVICE):
        try:
            ipr.link("add", ifname=HOST_DEVICE, kind="veth", peer=HOST_PEER)
        except NetlinkError as exc:
            if exc.code != EEXIST:  # a concurrent ADD made it
                raise
    idx = ipr.link_lookup(ifname=HOST_DEVICE)[0]
    ipr.link("set", index=idx, state="up")
    for peer in ipr.link_lookup(ifname=HOST_PEER):
        ipr.link("set", index=peer, state="up")
    return idx


def ensure_address(ipr: IPRoute, idx: int, address: IPv4Address | IPv6Address) -> None:
    """`address` on the device as a host address (/32, /128), once."""
    family = 2 if address.version == 4 else 10
    have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx, family=family)}
    if str(address) in have:
        return
    kw = {}
    if address.version == 6:
        # IPv6 on, whatever the node's default (a node may turn it off for new
        # devices); no DAD: the host routes name it as their source at once,
        # and a tentative address cannot be one.
        sysctl.write(f"/proc/sys/net/ipv6/conf/{HOST_DEVICE}/disable_ipv6", "0")
        kw["flags"] = IFA_F_NODAD
    try:
        ipr.addr("add", index=idx, address=str(address), prefixlen=address.max_prefixlen, **kw)
    except NetlinkError as exc:
        if exc.code != EEXIST:
            raise
