"""Who runs where in the simulated cluster: node addresses, pod CIDRs, pod
addresses and label sets, computed rather than stored so that the load
generator and node B's driver (separate processes) agree without talking."""

from __future__ import annotations

import math
from ipaddress import IPv4Address, IPv4Network

from kvstore import NodeInfo
from policy.endpoint import NAMESPACE_LABEL
from policy.identity import identity_labels

APPS_PER_NAMESPACE = 20


class Geometry:
    """Who runs where: node i has pod CIDR 10.128.0.0 + i*256 /24, pods on .2 upwards;
    pod j of node i belongs to label set (i // per_identity) * pods + j."""

    SLOTS = 253  # .2 .. .254

    def __init__(self, nodes: int, pods: int, per_identity: int, adds: int) -> None:
        if not 1 <= pods <= 200:
            raise SystemExit("--pods must be 1..200 (one /24 per node, the rest is room for the adds and churn)")
        self.nodes, self.pods, self.per = nodes, pods, per_identity
        self.n_sets = math.ceil(nodes / per_identity) * pods
        self.add_nodes = max(1, math.ceil(adds / (self.SLOTS - pods)))
        if nodes <= self.add_nodes:
            raise SystemExit(f"--nodes must be above {self.add_nodes} (nodes taking the measured adds; churn uses the rest)")
        self.b = NodeInfo(name="node-b", ip=IPv4Address("172.31.255.254"), pod_cidr=IPv4Network("10.127.255.0/24"))

    @staticmethod
    def name(i: int) -> str:
        return f"sim-{i:04d}"

    def info(self, i: int) -> NodeInfo:
        cidr = IPv4Network((int(IPv4Address("10.128.0.0")) + (i << 8), 24))
        return NodeInfo(name=self.name(i), ip=IPv4Address(int(IPv4Address("172.16.0.1")) + i), pod_cidr=cidr)

    @staticmethod
    def ip(i: int, slot: int) -> IPv4Address:
        return IPv4Address(int(IPv4Address("10.128.0.2")) + (i << 8) + slot)

    def set_of(self, i: int, j: int) -> int:
        return (i // self.per) * self.pods + j

    @staticmethod
    def labels(s: int) -> frozenset[str]:
        ns, app = divmod(s, APPS_PER_NAMESPACE)
        return identity_labels({"app": f"app{app}", NAMESPACE_LABEL: f"ns{ns}"})

    def remote_nets(self) -> list[IPv4Network]:
        return [IPv4Network(f"{self.ip(i, j)}/32") for i in range(self.nodes) for j in range(self.pods)]
