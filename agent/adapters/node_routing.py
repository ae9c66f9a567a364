"""The NodeRouting port bound to the kernel: direct routes to the other
nodes' pod CIDRs (redirect/node_routes.py) and the underlay device's program
(bpf_lo.c from_netdev, through the kernel datapath). Does netlink I/O in
worker threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from ipaddress import IPv4Address

from agent.adapters.kernel_datapath import KernelDatapath
from agent.core.cluster_ports import PeerNode
from redirect import node_routes


class DirectRouting:
    def __init__(self, kernel: KernelDatapath, node_ip: IPv4Address) -> None:
        self.kernel = kernel
        self.node_ip = node_ip
        self.device: str | None = None

    async def setup(self) -> None:
        self.device = await asyncio.to_thread(node_routes.device_of, self.node_ip)
        six = any(f.version == 6 and f.enforced for f in self.kernel.families())
        await asyncio.to_thread(node_routes.enable_forwarding, self.device, six)
        await self.kernel.attach_underlay(self.device)

    async def set_routes(self, nodes: Mapping[str, PeerNode]) -> None:
        await asyncio.to_thread(node_routes.sync, routes_to(nodes, self.node_ip))


def routes_to(nodes: Mapping[str, PeerNode], node_ip: IPv4Address) -> dict:
    """Each other node's pod CIDRs via its address of that family. A node
    that published an IPv6 pod CIDR without an IPv6 address cannot be given
    a route for it (Linux takes no IPv4 next hop for an IPv6 route): its IPv6
    pods stay unreachable from here, as its agent's start-up check says."""
    routes: dict = {}
    for n in nodes.values():
        if n.ip == node_ip:
            continue
        routes[n.pod_cidr] = n.ip
        if n.pod_cidr6 is not None and n.ip6 is not None:
            routes[n.pod_cidr6] = n.ip6
    return routes
