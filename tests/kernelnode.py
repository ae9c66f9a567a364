"""A throw-away "node" with N pods in real network namespaces, for tests,
benchmarks and the demo. Does kernel I/O (netns, veth, addresses, routes,
sysctls); needs root. Callers hold /tmp/ciliate-kernel.lock around its use.

Layout (decided: the node is a dedicated network namespace by default, so a
test never touches the root netns's routes, rules or nftables, and parallel
users cannot collide; pass `node_netns=False` to build the pods off the root
netns instead, as a real agent would see them):

    node netns  (lo up, ip_forward=1, rp_filter=0; in the root netns these
                 two sysctls are put back on exit)
      <prefix><tag><i>  host side of pod i's veth; carries the node's
                        gateway address GATEWAY/32, route POD_IP/32 dev it
    pod netns i
      eth0              POD_IP/32, default via GATEWAY onlink

Every pod reaches every other pod and the node through the node netns, so
packets of pod i always cross the host side of its veth: where the datapath
attaches. Everything is removed on exit, also when the body raises.

    with kernel_node([PodSpec("client", "10.201.0.2"), PodSpec("server", "10.201.0.3")]) as node:
        srv = node.pods["server"].socket(socket.SOCK_STREAM)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import socket
import subprocess
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Iterator, Mapping, Sequence

from pyroute2 import IPRoute, netns

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)
GATEWAY = IPv4Address("10.201.255.254")


@dataclass(frozen=True)
class PodSpec:
    name: str
    ipv4: IPv4Address | str
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def ip(self) -> IPv4Address:
        return IPv4Address(self.ipv4)


@contextlib.contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the block with the calling thread in netns `name` (None: stay).
    Sockets created inside keep that netns for their whole life."""
    if name is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({name})")
        try:
            yield
        finally:
            _libc.setns(own, CLONE_NEWNET)
    finally:
        os.close(target)
        os.close(own)


def _sysctl(ns: str | None, key: str, value: str) -> str:
    """Set a sysctl in netns `ns`; returns the previous value."""
    with in_netns(ns):
        path = "/proc/sys/" + key.replace(".", "/")
        with open(path) as f:
            old = f.read().strip()
        with open(path, "w") as f:
            f.write(value)
    return old


@dataclass
class Pod:
    name: str
    ip: IPv4Address
    labels: Mapping[str, str]
    netns: str
    host_ifname: str
    host_ifindex: int

    def socket(self, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket living in this pod's netns."""
        with in_netns(self.netns):
            return socket.socket(socket.AF_INET, kind)

    def argv(self, argv: Sequence[str]) -> list[str]:
        """Prefix that runs a command inside this pod."""
        return ["ip", "netns", "exec", self.netns, *argv]


@dataclass
class Node:
    netns: str | None  # None: the root netns
    gateway: IPv4Address
    pods: dict[str, Pod]

    def socket(self, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket in the node netns (where a proxy would listen)."""
        with in_netns(self.netns):
            return socket.socket(socket.AF_INET, kind)

    def argv(self, argv: Sequence[str]) -> list[str]:
        return list(argv) if self.netns is None else ["ip", "netns", "exec", self.netns, *argv]

    def iproute(self) -> IPRoute:
        return IPRoute(netns=self.netns) if self.netns else IPRoute()


@contextlib.contextmanager
def kernel_node(
    pods: Sequence[PodSpec], *, prefix: str = "cdp", node_netns: bool = True, gateway: IPv4Address = GATEWAY
) -> Iterator[Node]:
    tag = secrets.token_hex(2)
    if len(prefix) + len(tag) + len(str(len(pods))) + 2 > 15:
        raise ValueError(f"prefix {prefix!r} too long for interface names")
    node_ns = f"{prefix}node-{tag}" if node_netns else None
    created_ns: list[str] = []
    host_ifs: list[str] = []
    restore: list[tuple[str, str]] = []  # root-netns sysctls to put back
    try:
        if node_ns:
            netns.create(node_ns)
            created_ns.append(node_ns)
        with (IPRoute(netns=node_ns) if node_ns else IPRoute()) as ipr:
            if node_ns:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            for key in ("net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter"):
                old = _sysctl(node_ns, key, "1" if key.endswith("forward") else "0")
                if node_ns is None:
                    restore.append((key, old))
            out: dict[str, Pod] = {}
            for i, spec in enumerate(pods):
                pod_ns = f"{prefix}-{tag}-{spec.name}"[:60]
                netns.create(pod_ns)
                created_ns.append(pod_ns)
                host_if, peer_tmp = f"{prefix}{tag}h{i}", f"{prefix}{tag}p{i}"
                ipr.link("add", ifname=host_if, kind="veth", peer=peer_tmp)
                host_ifs.append(host_if)
                peer_idx = ipr.link_lookup(ifname=peer_tmp)[0]
                ipr.link("set", index=peer_idx, net_ns_fd=pod_ns)
                hidx = ipr.link_lookup(ifname=host_if)[0]
                _sysctl(node_ns, f"net.ipv4.conf.{host_if}.rp_filter", "0")
                ipr.addr("add", index=hidx, address=str(gateway), prefixlen=32)
                ipr.link("set", index=hidx, state="up")
                ipr.route("add", dst=f"{spec.ip}/32", oif=hidx, scope=253)
                with IPRoute(netns=pod_ns) as pr:
                    pidx = pr.link_lookup(ifname=peer_tmp)[0]
                    pr.link("set", index=pidx, ifname="eth0")
                    pr.addr("add", index=pidx, address=str(spec.ip), prefixlen=32)
                    pr.link("set", index=pidx, state="up")
                    pr.link("set", index=pr.link_lookup(ifname="lo")[0], state="up")
                    pr.route("add", dst=f"{gateway}/32", oif=pidx, scope=253)
                    pr.route("add", dst="0.0.0.0/0", gateway=str(gateway), oif=pidx)
                out[spec.name] = Pod(spec.name, spec.ip, dict(spec.labels), pod_ns, host_if, hidx)
        yield Node(node_ns, gateway, out)
    finally:
        errors: list[str] = []
        for key, old in reversed(restore):
            with contextlib.suppress(OSError):
                _sysctl(None, key, old)
        if node_ns is None and host_ifs:
            with IPRoute() as ipr:
                for name in host_ifs:
                    for idx in ipr.link_lookup(ifname=name):
                        with contextlib.suppress(Exception):
                            ipr.link("del", index=idx)
        for ns in reversed(created_ns):
            try:
                netns.remove(ns)
            except Exception as e:  # keep removing the rest
                errors.append(f"{ns}: {e}")
        if errors:
            raise RuntimeError("kernel_node teardown left: " + "; ".join(errors))


def run_in(node_or_pod: Node | Pod, argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(node_or_pod.argv(argv), check=True, capture_output=True, text=True, **kw)


def node_fixture(pods: Sequence[PodSpec], *, scope: str = "function", **kw):
    """A pytest fixture yielding a Node built from `pods`, torn down after.

        node = node_fixture([PodSpec("client", "10.201.0.2", {"app": "x"})], prefix="cag")
    """
    import pytest

    @pytest.fixture(scope=scope)
    def _node() -> Iterator[Node]:
        with kernel_node(pods, **kw) as node:
            yield node

    return _node


def wire_ipv6(node_netns: str | None, pod: Pod, address: str, node_address: str) -> None:
    """Give a pod of the node an IPv6 address as ciliate-cni does (its own
    code: agent/cni/net6.py), and turn on the node's IPv6 forwarding."""
    from ipaddress import IPv6Address

    from agent.cni import net6
    from agent.cni.addressing import IPv6Plan

    v6 = IPv6Plan(IPv6Address(address), IPv6Address(node_address))
    _sysctl(node_netns, "net.ipv6.conf.all.forwarding", "1")
    with in_netns(node_netns):
        net6.enable_on_host(pod.host_ifname)
        with IPRoute() as ipr:
            host_mac = ipr.get_links(pod.host_ifindex)[0].get_attr("IFLA_ADDRESS")
    net6.enable_in_pod(f"/run/netns/{pod.netns}", "eth0")
    with IPRoute(netns=pod.netns) as pr:
        idx = pr.link_lookup(ifname="eth0")[0]
        pod_mac = pr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
        net6.wire_pod(pr, idx, v6, host_mac)
    with in_netns(node_netns), IPRoute() as ipr:
        net6.wire_host(ipr, pod.host_ifindex, v6, pod_mac)
