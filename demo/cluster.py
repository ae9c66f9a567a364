"""A throw-away cluster of ciliate nodes on one machine, with real parts.

Each node is a demo.node.Node (its own host network namespace, agent, state
dir, bpffs dir and Envoy; pods joined through ciliate-cni). The nodes are
joined by an underlay: a bridge in a network namespace of its own, one veth
per node, addresses from UNDERLAY. One real etcd (Debian's etcd-server,
started by demo/etcd_process.py) runs in the underlay namespace, reachable
from every node at ETCD_URL; the agents run with `--kvstore etcd` and route
each other's pod CIDRs directly. Pods are dual-stack: node i's IPv6 pods get
POD_CIDRS6's i-th /64, routed by the other nodes via node i's IPv6 underlay
address (UNDERLAY6).

Used by `ciliate demo --nodes N`, the cluster tests and the cluster
benchmark. Does I/O throughout. Everything it makes (namespaces, veths, pins,
processes, files) is removed on exit, also when the body raises.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

from demo.etcd_process import EtcdProcess, EtcdStartError
from demo.node import NETNS_DIR, Node, NodeError, _run

UNDERLAY = IPv4Network("10.250.0.0/24")  # node addresses; .254 is etcd's
POD_CIDRS = IPv4Network("10.251.0.0/16")  # node i gets 10.251.i.0/24
POD_CIDRS6 = IPv6Network("fd00:10:251::/48")  # node i gets fd00:10:251:i::/64
UNDERLAY6 = IPv6Network("fd00:10:250::/64")  # node i's IPv6 on the underlay: ::i
ETCD_ADDR = UNDERLAY.network_address + 254
ETCD_PORT = 2379
ETCD_URL = f"http://{ETCD_ADDR}:{ETCD_PORT}"


class Cluster:
    """Context manager: `nodes` nodes and one etcd; see the module docstring."""

    def __init__(self, nodes: int = 2, prefix: str = "cilc", lease_ttl: float = 5.0, workdir: Path | None = None) -> None:
        if not 1 <= nodes <= 9:
            raise ValueError("1 to 9 nodes")
        self.prefix = prefix
        self.lease_ttl = lease_ttl
        self.net_ns = f"{prefix}-net"
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        # In the underlay's namespace, at an address every node reaches (data kept across restart()).
        self.etcd = EtcdProcess(
            self.workdir, name="demo", address=str(ETCD_ADDR), client_port=ETCD_PORT, peer_port=2380,
            netns=NETNS_DIR / self.net_ns,
        )
        self.nodes = [
            Node(prefix=f"{prefix}{i}", subnet=str(self.pod_cidr(i)), workdir=self.workdir / f"node{i}",
                 subnet6=str(self.pod_cidr6(i)))
            for i in range(1, nodes + 1)
        ]

    @staticmethod
    def pod_cidr(i: int) -> IPv4Network:
        return IPv4Network(f"{POD_CIDRS.network_address + (i << 8)}/24")

    @staticmethod
    def pod_cidr6(i: int) -> IPv6Network:
        return IPv6Network(f"{POD_CIDRS6.network_address + (i << 64)}/64")

    @staticmethod
    def node_ip(i: int) -> IPv4Address:
        return UNDERLAY.network_address + i

    @staticmethod
    def node_ip6(i: int) -> IPv6Address:
        return UNDERLAY6.network_address + i

    def node_name(self, i: int) -> str:
        return f"node{i}"

    def __enter__(self) -> "Cluster":
        if os.geteuid() != 0:
            raise NodeError("the cluster needs root: network namespaces, tc and bpf")
        try:
            _run("ip", "netns", "del", self.net_ns)
            _run("ip", "netns", "add", self.net_ns, check=True)
            ns = ("ip", "-n", self.net_ns)
            _run(*ns, "link", "set", "lo", "up", check=True)
            _run(*ns, "link", "add", "br0", "type", "bridge", check=True)
            _run(*ns, "addr", "add", f"{ETCD_ADDR}/{UNDERLAY.prefixlen}", "dev", "br0", check=True)
            _run(*ns, "link", "set", "br0", "up", check=True)
            for i, node in enumerate(self.nodes, start=1):
                node.__enter__()
                self._wire(i, node)
            try:
                self.etcd.start()
            except EtcdStartError as exc:
                raise NodeError(str(exc)) from exc
        except BaseException:
            self.close()
            raise
        return self

    def _wire(self, i: int, node: Node) -> None:
        """veth u<i> (bridge port) <-> eth-u (the node's underlay device)."""
        peer = f"{self.prefix}u{i}"
        _run("ip", "link", "del", peer)
        _run("ip", "link", "add", peer, "netns", self.net_ns, "type", "veth", "peer", "name", "eth-u", "netns", node.host_ns, check=True)
        _run("ip", "-n", self.net_ns, "link", "set", peer, "master", "br0", "up", check=True)
        _run("ip", "-n", node.host_ns, "addr", "add", f"{self.node_ip(i)}/{UNDERLAY.prefixlen}", "dev", "eth-u", check=True)
        _run("ip", "-n", node.host_ns, "addr", "add", f"{self.node_ip6(i)}/{UNDERLAY6.prefixlen}", "dev", "eth-u", "nodad",
             check=True)
        _run("ip", "-n", node.host_ns, "link", "set", "eth-u", "up", check=True)

    def agent_args(self, i: int) -> list[str]:
        return [
            "--kvstore", "etcd", "--kvstore-opt", f"etcd.endpoints={ETCD_URL}",
            "--node-name", self.node_name(i), "--node-ip", str(self.node_ip(i)), "--pod-cidr", str(self.pod_cidr(i)),
            "--pod-cidr", str(self.pod_cidr6(i)), "--node-ip", str(self.node_ip6(i)),
            "--kvstore-lease-ttl", str(self.lease_ttl),
        ]

    def start_agent(self, i: int, timeout: float = 60.0, healthy: bool = True) -> None:
        self.nodes[i - 1].start_agent(*self.agent_args(i), timeout=timeout, healthy=healthy)

    def start(self) -> "Cluster":
        for i in range(1, len(self.nodes) + 1):
            self.start_agent(i)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        self.etcd.close()
        _run("ip", "netns", "del", self.net_ns)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def identities(self) -> dict[str, dict[str, int | None]]:
        """pod name -> {node prefix: the identity that node's agent gives the
        pod's address}: its own endpoint list for its pods, `identity list`
        + the remote ipcache for the others (what `ciliate` shows)."""
        out: dict[str, dict[str, int | None]] = {}
        pods = {p.ip: name for n in self.nodes for name, p in n.pods.items()}
        for node in self.nodes:
            if node.agent is None or node.agent.poll() is not None:
                continue
            for ep in node.ciliate_json("endpoint", "list")["endpoints"]:
                name = pods.get(str(ep.get("ipv4")))
                if name is not None:
                    out.setdefault(name, {})[node.prefix] = ep.get("identity")
            labels_by_id = {i["id"]: set(i["labels"]) for i in node.ciliate_json("identity", "list")["identities"]}
            for other in self.nodes:
                if other is node:
                    continue
                for name, pod in other.pods.items():
                    want = {f"k8s:{k}={v}" for k, v in pod.labels.items()}
                    seen = [i for i, ls in labels_by_id.items() if want <= ls]
                    out.setdefault(name, {})[node.prefix] = seen[0] if len(seen) == 1 else None
        return out

    def wait_peers(self, timeout: float = 30.0) -> None:
        """Until every agent sees every other node and their endpoints."""
        want_nodes = len(self.nodes) - 1
        deadline = time.monotonic() + timeout
        last: list = []
        while time.monotonic() < deadline:
            last = []
            for node in self.nodes:
                if node.agent is None or node.agent.poll() is not None:
                    continue
                kv = node.status().get("kvstore") or {}
                others = sum(len(n.pods) for n in self.nodes if n is not node and n.agent is not None and n.agent.poll() is None)
                last.append((node.prefix, kv))
                if kv.get("remote_nodes", -1) < want_nodes or kv.get("remote_endpoints", -1) < others:
                    break
            else:
                return
            time.sleep(0.1)
        raise NodeError(f"agents do not see each other after {timeout:.0f}s: {last}")
