"""The SharedState port bound to etcd (kvstore.cluster.Cluster).

Identities are cached per label set once allocated: this node holds a
reference on each (kvstore/ re-publishes the references if its lease was
lost), so the number cannot be collected under it and a regeneration does
not pay two etcd round trips per endpoint. A label set no local endpoint
has any more is released (its reference deleted) when the endpoints are
next published. Does network I/O through kvstore/.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from agent.core.ports import ClusterPeers, IdentityUnavailable, PeerNode
from kvstore.cluster import Cluster
from kvstore.config import EtcdConfig
from kvstore.errors import KvstoreError, KvstoreUnavailable
from kvstore.model import ClusterView, NodeInfo

log = logging.getLogger(__name__)


class KvstoreState:
    def __init__(self, config: EtcdConfig, node: NodeInfo, state_dir: Path, **cluster_options: Any) -> None:
        self.config = config
        self.node = node
        self._state_dir = state_dir
        self._options = cluster_options
        self._cluster: Cluster | None = None
        self._on_change: Callable[[], None] | None = None
        self._ids: dict[frozenset[str], int] = {}
        self._published: dict[IPv4Address, int] = {}
        self._view: ClusterView | None = None
        self._peers = ClusterPeers()

    async def start(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change
        self._cluster = Cluster(self.config, self.node, self._state_dir, self._view_changed, **self._options)
        await self._cluster.start()

    async def stop(self) -> None:
        if self._cluster is not None:
            await self._cluster.stop()

    def _view_changed(self, view: ClusterView) -> None:
        if self._on_change is not None:
            self._on_change()

    async def identity_for(self, labels: frozenset[str]) -> int:
        ident = self._ids.get(labels)
        if ident is not None:
            return ident
        assert self._cluster is not None, "start() first"
        try:
            ident = await self._cluster.allocate_identity(labels)
        except KvstoreUnavailable as exc:
            raise IdentityUnavailable(f"etcd at {', '.join(self.config.endpoints)} unreachable: {exc}") from None
        except KvstoreError as exc:
            raise IdentityUnavailable(str(exc)) from None
        self._ids[labels] = ident
        return ident

    async def publish(self, endpoints: Mapping[IPv4Address, tuple[int, frozenset[str]]]) -> None:
        assert self._cluster is not None, "start() first"
        for addr in [a for a in self._published if a not in endpoints]:
            await self._cluster.remove_endpoint(addr)
            del self._published[addr]
        for addr, (ident, _) in endpoints.items():
            if self._published.get(addr) != ident:
                await self._cluster.set_endpoint(addr, ident)
                self._published[addr] = ident
        in_use = {labels for _, labels in endpoints.values()}
        for labels in [ls for ls in self._ids if ls not in in_use]:
            del self._ids[labels]
            try:
                await self._cluster.release_identity(labels)
            except KvstoreError as exc:  # best effort: the reference goes with the lease anyway
                log.warning("releasing identity of %s: %s", sorted(labels), exc)

    def peers(self) -> ClusterPeers:
        if self._cluster is None:
            return self._peers
        view = self._cluster.view
        if view is not self._view:
            self._view = view
            self._peers = ClusterPeers(
                nodes={n.name: PeerNode(n.name, n.ip, n.pod_cidr) for n in view.nodes.values()},
                endpoints={
                    ep.ip: (ep.identity, view.identities.get(ep.identity, frozenset())) for ep in view.endpoints.values()
                },
            )
        return self._peers

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
        return st
