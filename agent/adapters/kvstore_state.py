"""The SharedState port bound to etcd (kvstore.cluster.Cluster).

A number this node holds is answered by kvstore/ without a round trip
(it holds a reference on it, re-published if its lease was lost, so the
number cannot be collected under it). The label sets asked for are
remembered here only to release them: one no local endpoint has any more
loses this node's reference when the endpoints are next published.

Until the store has been listed once since this start (etcd down when the
agent restarts), peers() is the snapshot the previous run saved
(`STATE/kvstore-peers.json`, 0600), not an empty cluster: an empty one would
take every remote pod out of the kernel's ipcache and every route to the
other nodes away, dropping traffic that was allowed a moment before. Does
network I/O through kvstore/ and writes that one file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any

import asyncio
import bisect
import collections
import functools
import json
import os
import time
from ipaddress import IPv4Network, IPv6Network

import immutables

from agent.core.cluster_ports import ClusterPeers, IdentityUnavailable, PeerNode
from kvstore.cluster import Cluster
from kvstore.config import EtcdConfig
from kvstore.errors import KvstoreError, KvstoreUnavailable
from kvstore.model import ClusterView, NodeInfo, RemoteEndpoint

log = logging.getLogger(__name__)

PEERS_FILE = "kvstore-peers.json"
SAVE_DELAY = 1.0  # seconds: a burst of changes is saved once
SAVE_SHARE = 0.01  # of the time, at most, spent saving the view (a fallback for a restart with etcd down)
# Peers changes remembered for changed_since(): more than a regeneration can
# fall behind while events keep coming; past it the compiler takes peers whole.
JOURNAL = 1024


class KvstoreState:
    def __init__(self, config: EtcdConfig, node: NodeInfo, state_dir: Path, **cluster_options: Any) -> None:
        self.config = config
        self.node = node
        self._state_dir = state_dir
        self._options = cluster_options
        self._cluster: Cluster | None = None
        self._on_change: Callable[[], None] | None = None
        self._ids: dict[frozenset[str], int] = {}
        self._published: dict[IPv4Address | IPv6Address, tuple[int, tuple[tuple[str, int, int], ...]]] = {}
        self._view: ClusterView | None = None
        self._peers = ClusterPeers()
        # What trusted_peers left out: nodes (recomputed whole when a node
        # changes) and endpoints (patched with the addresses that changed).
        self._refused_nodes: list[str] = []
        self._refused_eps: dict[IPv4Address | IPv6Address, str] = {}
        # (serial of a peers, addresses changed from the one before; None:
        # computed whole): what changed_since() tells the compiler.
        self._journal: collections.deque[tuple[int, frozenset[IPv4Address | IPv6Address] | None]] = collections.deque(maxlen=JOURNAL)
        self._restored: ClusterPeers | None = None
        self._save_task: asyncio.Task[None] | None = None
        self._save_seconds = 0.0  # how long the last save took

    async def start(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change
        self._restored = await asyncio.to_thread(self._load_saved)
        self._cluster = Cluster(self.config, self.node, self._state_dir, self._view_changed, **self._options)
        await self._cluster.start()

    async def stop(self) -> None:
        if self._save_task is not None:
            self._save_task.cancel()
            await asyncio.gather(self._save_task, return_exceptions=True)
        if self._cluster is not None:
            if self._cluster.view.revision:
                await asyncio.to_thread(self._save, self._cluster.view)
            await self._cluster.stop()

    def _view_changed(self, view: ClusterView) -> None:
        if self._on_change is not None:
            self._on_change()
        if view.revision and (self._save_task is None or self._save_task.done()):
            self._save_task = asyncio.get_running_loop().create_task(self._save_later(), name="kvstore-save-peers")

    async def _save_later(self) -> None:
        # At most SAVE_SHARE of the time spent saving: writing 25,000 remote
        # pods takes ~0.15 s, which once a second was 15 % of a core.
        await asyncio.sleep(max(SAVE_DELAY, self._save_seconds / SAVE_SHARE))
        assert self._cluster is not None
        try:
            t0 = time.monotonic()
            await asyncio.to_thread(self._save, self._cluster.view)
            self._save_seconds = time.monotonic() - t0
        except OSError as exc:
            log.warning("saving the cluster view to %s failed: %s", self._state_dir / PEERS_FILE, exc)

    def _save(self, view: ClusterView) -> None:
        doc = {
            "revision": view.revision,
            "nodes": {
                n.name: {"ip": str(n.ip), "pod_cidr": str(n.pod_cidr), "pod_cidr6": _str(n.pod_cidr6), "ip6": _str(n.ip6),
                         "labels": dict(n.labels or {})}
                for n in view.nodes.values()
            },
            "endpoints": {str(e.ip): [e.identity, e.node] for e in view.endpoints.values()},
            "identities": {str(i): sorted(ls) for i, ls in view.identities.items()},
        }
        path = self._state_dir / PEERS_FILE
        tmp = path.with_name(f".{PEERS_FILE}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _load_saved(self) -> ClusterPeers | None:
        path = self._state_dir / PEERS_FILE
        try:
            doc = json.loads(path.read_text())
            view = ClusterView(
                nodes={
                    name: NodeInfo(
                        name=name, ip=IPv4Address(n["ip"]), pod_cidr=IPv4Network(n["pod_cidr"]),
                        pod_cidr6=IPv6Network(n["pod_cidr6"]) if n.get("pod_cidr6") else None,
                        ip6=IPv6Address(n["ip6"]) if n.get("ip6") else None,
                        labels=n.get("labels") or None,
                    )
                    for name, n in doc["nodes"].items()
                    if name != self.node.name
                },
                endpoints={
                    ip_address(ip): RemoteEndpoint(ip=ip_address(ip), identity=int(ident), node=node)
                    for ip, (ident, node) in doc["endpoints"].items()
                },
                identities={int(i): frozenset(ls) for i, ls in doc["identities"].items()},
                revision=int(doc["revision"]),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the saved cluster view %s: %s", path, exc)
            return None
        peers, _ = trusted_peers(view, self.node)
        log.info("cluster view of the previous run: %d nodes, %d endpoints (in force until etcd is listed)", len(peers.nodes), len(peers.endpoints))
        return peers

    async def identity_for(self, labels: frozenset[str]) -> int:
        # kvstore answers a number this node holds without asking etcd, and
        # forgets it if etcd says it was collected and given away meanwhile:
        # asking it each time keeps one source of truth.
        assert self._cluster is not None, "start() first"
        try:
            ident = await self._cluster.allocate_identity(labels)
        except KvstoreUnavailable as exc:
            raise IdentityUnavailable(f"etcd at {', '.join(self.config.endpoints)} unreachable: {exc}") from None
        except KvstoreError as exc:
            raise IdentityUnavailable(str(exc)) from None
        self._ids[labels] = ident
        return ident

    async def publish(
        self,
        endpoints: Mapping[IPv4Address | IPv6Address, tuple[int, frozenset[str]]],
        named_ports: Mapping[IPv4Address | IPv6Address, tuple[tuple[str, int, int], ...]] | None = None,
    ) -> None:
        assert self._cluster is not None, "start() first"
        named_ports = named_ports or {}
        for addr in [a for a in self._published if a not in endpoints]:
            await self._cluster.remove_endpoint(addr)
            del self._published[addr]
        for addr, (ident, _) in endpoints.items():
            want = (ident, tuple(sorted(named_ports.get(addr, ()))))
            if self._published.get(addr) != want:
                await self._cluster.set_endpoint(addr, ident, want[1])
                self._published[addr] = want
        in_use = {labels for _, labels in endpoints.values()}
        for labels in [ls for ls in self._ids if ls not in in_use]:
            del self._ids[labels]
            try:
                await self._cluster.release_identity(labels)
            except KvstoreError as exc:  # best effort: the reference goes with the lease anyway
                log.warning("releasing identity of %s: %s", sorted(labels), exc)

    async def set_node_labels(self, labels: Mapping[str, str] | None) -> None:
        assert self._cluster is not None, "start() first"
        try:
            await self._cluster.set_node_labels(labels)
        except ValueError as exc:  # the record's own validation (label length)
            log.warning("kvstore: node labels not published, the previous ones stay: %s", exc)
        self.node = self._cluster.node

    def peers(self) -> ClusterPeers:
        if self._cluster is None:
            return self._peers
        view = self._cluster.view
        if view.revision == 0 and self._restored is not None:
            return self._restored  # not listed since start: keep what the kernel enforces
        if view is not self._view:
            prev, self._view = self._view, view
            serial = self._peers.serial + 1
            # Several views may have passed since the last one taken here
            # (events keep coming while a regeneration runs): their union.
            # Taking only the newest view's delta sent every later event to
            # the whole recompute once two came within one regeneration,
            # which made the next regeneration longer still.
            moved = self._cluster.changed_since(prev.serial, view.serial) if prev is not None and self._peers.serial else None
            if moved is not None:
                self._peers, changed = patch_peers(self._peers, view, moved, self._refused_eps, serial)
            else:
                self._peers, self._refused_nodes, self._refused_eps = trusted_parts(view, self.node, serial)
                changed = None
            self._journal.append((serial, changed))
            refused = self.refused()
            for what in refused[:5]:
                log.warning("kvstore: ignoring %s", what)
        return self._peers

    def changed_since(self, serial: int) -> frozenset[IPv4Address | IPv6Address] | None:
        now = self.peers().serial
        if serial == now:
            return frozenset()
        steps = [c for s, c in self._journal if s > serial]
        if not serial or len(steps) != now - serial or any(c is None for c in steps):
            return None  # older than the journal, a whole recompute between, or peers restored
        return frozenset().union(*steps)

    def refused(self) -> list[str]:
        return [*self._refused_nodes, *self._refused_eps.values()]

    def status(self) -> Mapping[str, Any]:
        if self._cluster is None:
            return {"ok": False, "detail": "not started"}
        st = dict(self._cluster.status())
        ok = bool(self._cluster.connected)
        st.setdefault("detail", "" if ok else f"etcd at {', '.join(self.config.endpoints)} unreachable")
        st["ok"] = ok
        st["node"] = self.node.name
        peers = self.peers()
        st["remote_nodes"] = len(peers.nodes)
        st["remote_endpoints"] = len(peers.endpoints)
        st["identities_held"] = len(self._ids)
        refused = self.refused()
        st["refused_entries"] = len(refused)
        if refused:
            st["refused_example"] = refused[0]
        return st


def trusted_peers(view: ClusterView, me: NodeInfo, serial: int = 0) -> tuple[ClusterPeers, list[str]]:
    """The view as far as it can be believed, and what was left out and why
    (trusted_parts has the why by node and by endpoint)."""
    peers, refused_nodes, refused_eps = trusted_parts(view, me, serial)
    return peers, [*refused_nodes, *refused_eps.values()]


def trusted_parts(
    view: ClusterView, me: NodeInfo, serial: int = 0,
) -> tuple[ClusterPeers, list[str], dict[IPv4Address | IPv6Address, str]]:
    """The view as far as it can be believed, and what was left out and why
    (nodes; endpoints by address).

    Anyone who can write to etcd can claim anything; these checks keep one
    bad or stale entry from taking over traffic it has no business with:
    a node whose pod CIDR overlaps this node's or an earlier node's (a route
    for it would steal their pods' traffic; the first by name keeps it), and
    an endpoint outside its own node's pod CIDR (an entry for, say, a world
    address would hand that address a pod's identity and its allows).

    One pass over the endpoints plus n log n over the nodes (sorted ranges,
    not pairs); called when nodes changed or the view's delta is unknown,
    otherwise patch_peers() redoes the changed addresses only.
    """
    nodes, refused_nodes = _trusted_nodes(tuple(sorted(view.nodes.items())), me)
    endpoints: dict[IPv4Address | IPv6Address, tuple[int, frozenset[str]]] = {}
    named: dict[IPv4Address | IPv6Address, tuple[tuple[str, int, int], ...]] = {}
    refused_eps: dict[IPv4Address | IPv6Address, str] = {}
    for ep in view.endpoints.values():
        _trust_endpoint(ep, nodes, view.identities, endpoints, named, refused_eps)
    # Persistent maps, so that patch_peers() costs the addresses it changes
    # and not a copy of every remote pod.
    return ClusterPeers(nodes, immutables.Map(endpoints), immutables.Map(named), serial=serial), refused_nodes, refused_eps


def patch_peers(
    prev: ClusterPeers, view: ClusterView, addresses: frozenset[IPv4Address | IPv6Address],
    refused_eps: dict[IPv4Address | IPv6Address, str], serial: int,
) -> tuple[ClusterPeers, frozenset[IPv4Address | IPv6Address]]:
    """trusted_peers() of `view`, from `prev` (trusted_peers of the view
    before, whose nodes are the same) and the addresses that changed since;
    updates `refused_eps` in place. Returns the addresses whose entry moved."""
    endpoints = _persistent(prev.endpoints).mutate()
    named = _persistent(prev.named_ports).mutate()
    changed = set()
    for ip in addresses:
        before = (endpoints.pop(ip, None), named.pop(ip, None))
        refused_eps.pop(ip, None)
        ep = view.endpoints.get(ip)
        if ep is not None:
            _trust_endpoint(ep, prev.nodes, view.identities, endpoints, named, refused_eps)
        if (endpoints.get(ip), named.get(ip)) != before:
            changed.add(ip)
    return ClusterPeers(prev.nodes, endpoints.finish(), named.finish(), serial=serial), frozenset(changed)


def _persistent(m: Mapping) -> immutables.Map:
    return m if isinstance(m, immutables.Map) else immutables.Map(m)


def _trust_endpoint(
    ep: RemoteEndpoint, nodes: Mapping[str, PeerNode], identities: Mapping[int, frozenset[str]],
    endpoints: dict, named: dict, refused: dict,
) -> None:
    owner = nodes.get(ep.node)
    cidr = None if owner is None else (owner.pod_cidr6 if ep.ip.version == 6 else owner.pod_cidr)
    if cidr is None or ep.ip not in cidr:
        refused[ep.ip] = f"endpoint {ep.ip} of node {ep.node}: not inside that node's pod CIDR"
        return
    endpoints[ep.ip] = (ep.identity, identities.get(ep.identity, frozenset()))
    if ep.named_ports:
        named[ep.ip] = ep.named_ports


def _str(v: object) -> str | None:
    return None if v is None else str(v)


def _span(cidr: IPv4Network | IPv6Network) -> tuple[int, int]:
    return int(cidr.network_address), int(cidr.broadcast_address)


@functools.lru_cache(maxsize=4)
def _trusted_nodes_cached(items: tuple, me: NodeInfo) -> tuple[dict[str, PeerNode], tuple[str, ...]]:
    # Per family, the pod CIDRs taken so far as sorted (lo, hi, node) ranges.
    taken: dict[int, list[tuple[int, int, str]]] = {4: [(*_span(me.pod_cidr), "")], 6: []}
    if me.pod_cidr6 is not None:
        taken[6].append((*_span(me.pod_cidr6), ""))
    refused: list[str] = []
    nodes: dict[str, PeerNode] = {}
    for name, n in items:
        cidrs = [c for c in (n.pod_cidr, n.pod_cidr6) if c is not None]
        clash = next(((c, t) for c in cidrs if (t := _overlap(taken[c.version], c, name)) is not None), None)
        if clash is not None:
            cidr, t = clash
            whose = "this node's" if t[2] == "" else f"node {t[2]}'s"
            refused.append(f"node {name}: pod CIDR {cidr} overlaps {whose} pod CIDR")
            continue
        for c in cidrs:
            bisect.insort(taken[c.version], (*_span(c), name))
        nodes[name] = PeerNode(n.name, n.ip, n.pod_cidr, n.pod_cidr6, n.ip6, dict(n.labels or {}))
    for name, peer in list(nodes.items()):
        for addr in (peer.ip, peer.ip6):
            if addr is None:
                continue
            ranges, a = taken[addr.version], int(addr)
            at = bisect.bisect_right(ranges, (a, 2**128, "\uffff"))
            if at and ranges[at - 1][0] <= a <= ranges[at - 1][1]:
                refused.append(f"node {name}: address {addr} is inside a pod CIDR")
                del nodes[name]
                break
    return nodes, tuple(refused)


def _overlap(ranges: list[tuple[int, int, str]], cidr: IPv4Network | IPv6Network, name: str) -> tuple[int, int, str] | None:
    """The taken range `cidr` overlaps, if any. CIDRs either nest or are
    disjoint: only the neighbours of its sorted position can overlap."""
    lo, hi = _span(cidr)
    at = bisect.bisect_left(ranges, (lo, hi, name))
    return next((t for t in ranges[max(at - 1, 0) : at + 1] if t[0] <= hi and lo <= t[1]), None)


def _trusted_nodes(items: tuple, me: NodeInfo) -> tuple[dict[str, PeerNode], list[str]]:
    """The nodes to believe (cached: the node list changes rarely, pods often)."""
    nodes, refused = _trusted_nodes_cached(items, me)
    return dict(nodes), list(refused)
