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
from agent.core.ports import PeerNode
from redirect import node_routes


class DirectRouting:
    def __init__(self, kernel: KernelDatapath, node_ip: IPv4Address) -> None:
        self.kernel = kernel
        self.node_ip = node_ip
        self.device: str | None = None

    async def setup(self) -> None:
        self.device = await asyncio.to_thread(node_routes.device_of, self.node_ip)
        await asyncio.to_thread(node_routes.enable_forwarding, self.device)
        await self.kernel.attach_underlay(self.device)

    async def set_routes(self, nodes: Mapping[str, PeerNode]) -> None:
        routes = {n.pod_cidr: n.ip for n in nodes.values() if n.ip != self.node_ip}
        await asyncio.to_thread(node_routes.sync, routes)
