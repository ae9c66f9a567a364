"""Helpers for the kvstore tests: running nodes (a Cluster plus the views
it reported) and a polling `eventually`."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from kvstore import Cluster, ClusterView, NodeInfo, parse_kvstore_opts

# Fast defaults for tests: 2 s leases, 1 s calls, GC off unless asked for.
FAST = {"lease_ttl": 2.0, "op_timeout": 1.0, "gc_interval": 3600.0, "restore_grace": 3600.0}


@dataclass
class Node:
    name: str
    info: NodeInfo
    state_dir: Path
    cluster: Cluster
    views: list[ClusterView] = field(default_factory=list)

    @property
    def view(self) -> ClusterView:
        return self.cluster.view


_index = itertools.count(1)


def node_info(name: str) -> NodeInfo:
    i = next(_index) % 250 + 1
    return NodeInfo(name=name, ip=IPv4Address(f"192.168.0.{i}"), pod_cidr=IPv4Network(f"10.{i}.0.0/24"))


class ClusterFactory:
    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url = url
        self.tmp_path = tmp_path
        self.nodes: list[Node] = []

    async def node(
        self, name: str, *, url: str | None = None, state_dir: Path | None = None, info: NodeInfo | None = None,
        start: bool = True, **kwargs,
    ) -> Node:
        info = info or node_info(name)
        state_dir = state_dir or self.tmp_path / name
        views: list[ClusterView] = []
        cluster = Cluster(
            parse_kvstore_opts([f"etcd.endpoints={url or self.url}"]), info, state_dir, views.append,
            **{**FAST, **kwargs},
        )
        node = Node(name, info, state_dir, cluster, views)
        self.nodes.append(node)
        if start:
            await cluster.start()
        return node

    async def stop(self, node: Node, *, revoke: bool = False) -> None:
        await node.cluster.stop(revoke=revoke)
        self.nodes.remove(node)

    async def stop_all(self) -> None:
        nodes, self.nodes = self.nodes, []
        for n in nodes:
            await n.cluster.stop()


async def eventually(check: Callable[[], object], timeout: float = 20.0, what: str = "") -> object:
    """Poll `check` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or check} (last: {last!r})")
        await asyncio.sleep(0.02)


async def connected(node: Node, timeout: float = 20.0) -> None:
    try:
        await eventually(lambda: node.cluster.connected, timeout, f"{node.name} connected")
    except AssertionError as e:
        # Which endpoint, which lease, which last error: a failure in a full
        # CI run must say why without a re-run.
        raise AssertionError(f"{e}; status: {node.cluster.status()}") from None


@contextlib.contextmanager
def refused_endpoint() -> Iterator[str]:
    """An etcd URL on loopback that refuses every connection for as long as
    the block runs: the port stays bound (never listening), so no other
    process of a parallel run can start listening on it meanwhile, as it
    could on a port merely picked and released."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def apply_mirror_events(mirror, batch, rev: int, node_info: Callable[[str], NodeInfo]) -> int:
    """Feed a hypothesis batch of events to a kvstore.mirror.Mirror as watch
    events: ("ip", address, identity, node, delete), ("id", identity, label,
    delete) or ("node", name, delete). Returns the last revision used."""
    from kvstore import layout

    for ev in batch:
        rev += 1
        if ev[0] == "ip":
            _, ip, ident, node, delete = ev
            mirror.apply(delete, layout.ip_key(ip), b"" if delete else layout.ip_value(ident, node), rev)
        elif ev[0] == "id":
            _, ident, label, delete = ev
            mirror.apply(delete, layout.id_key(ident), b"" if delete else layout.labels_value(frozenset({label})), rev)
        else:
            _, name, delete = ev
            mirror.apply(delete, layout.node_key(name), b"" if delete else layout.node_value(node_info(name)), rev)
    return rev
