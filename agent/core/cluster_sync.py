"""Cluster mode's part of a regeneration (a shared kvstore, `--kvstore etcd`).

Before the compile: the cluster-wide identity of each endpoint in the batch.
The store may be unreachable; then an endpoint whose label set this node
already holds a number for (adopted from the cluster earlier, persisted with
the allocations) keeps it, so nothing the kernel enforces changes, and only
a label set never seen waits (the endpoint stays waiting-for-identity with
the reason, and is retried).

Into the compile: the rest of the cluster (other nodes' endpoints and
addresses), whenever the store showed a new view.

After the kernel write: this node's endpoints and labels are published, and routes to
the other nodes' pod CIDRs follow the node list. Routes come after the
ipcache holds the remote endpoints, so the first packet from a new node's pod
is already judged by its real identity. No I/O of its own: the SharedState
and NodeRouting ports do it.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from collections.abc import Callable, Iterable, Mapping
from ipaddress import IPv4Address, IPv6Address

from agent.core.ports import EndpointSpec
from agent.core.cluster_ports import ClusterPeers, IdentityUnavailable, NodeRouting, PeerNode, SharedState
from policy.identity import identity_labels

log = logging.getLogger(__name__)

RETRY_IDENTITY = 2.0  # seconds between attempts while the store is unreachable


class ClusterSync:
    def __init__(
        self,
        shared: SharedState,
        routing: NodeRouting | None,
        known: Callable[[], Mapping[int, frozenset[str]]],
    ) -> None:
        """`known`: every identity this node's compiler holds and its labels
        (the fallback while the store cannot answer)."""
        self.shared = shared
        self.routing = routing
        self._known = known
        self._taken: ClusterPeers | None = None
        self._routed: Mapping[str, PeerNode] | None = None
        self._published: dict[IPv4Address | IPv6Address, tuple[int, frozenset[str]]] | None = None
        self._published_labels: tuple[Mapping[str, str] | None] | None = None  # (labels,) once published
        self._published_ports: dict[IPv4Address | IPv6Address, tuple[tuple[str, int, int], ...]] = {}

    async def identities(self, specs: Iterable[EndpointSpec]) -> tuple[dict[int, int], dict[int, str]]:
        """(endpoint id -> identity, endpoint id -> why it has none yet)."""
        out: dict[int, int] = {}
        waiting: dict[int, str] = {}
        fallback: dict[frozenset[str], int] | None = None
        for spec in specs:
            label_set = identity_labels(spec.labels)
            try:
                out[spec.endpoint_id] = await self.shared.identity_for(label_set)
                continue
            except IdentityUnavailable as exc:
                reason = f"waiting for a cluster identity: {exc}"
            if fallback is None:
                fallback = {ls: i for i, ls in self._known().items()}
            held = fallback.get(label_set)
            if held is not None:
                out[spec.endpoint_id] = held
            else:
                waiting[spec.endpoint_id] = reason
        return out, waiting

    def peers_if_changed(self) -> ClusterPeers | None:
        """The store's view of the rest of the cluster when it changed since
        the last call, else None. It says which addresses changed since the
        one handed out before (`base`, `changed`) when the store still
        knows: the compiler patches those instead of comparing the cluster."""
        peers = self.shared.peers()
        if peers is self._taken:
            return None
        taken, self._taken = self._taken, peers
        if taken is not None and taken.serial and peers.serial:
            changed = self.shared.changed_since(taken.serial)
            if changed is not None:
                return replace(peers, base=taken.serial, changed=changed)
        return peers

    async def after_apply(
        self,
        local: Mapping[IPv4Address | IPv6Address, tuple[int, frozenset[str]]],
        node_labels: Mapping[str, str] | None = None,
        named_ports: Mapping[IPv4Address | IPv6Address, tuple[tuple[str, int, int], ...]] | None = None,
    ) -> None:
        """Publish this node's endpoints (with the ports they serve by name)
        and labels (what the other nodes' fromNodes/toNodes select it by) and
        follow the node list with routes."""
        named_ports = dict(named_ports or {})
        if local != self._published or named_ports != self._published_ports:
            await self.shared.publish(local, named_ports)
            self._published = dict(local)
            self._published_ports = named_ports
        if self._published_labels != (node_labels,):
            await self.shared.set_node_labels(node_labels)
            self._published_labels = (dict(node_labels) if node_labels is not None else None,)
        taken = self._taken
        if self.routing is not None and taken is not None and taken.nodes != self._routed:
            try:
                await self.routing.set_routes(taken.nodes)
                self._routed = taken.nodes
            except Exception:
                log.exception("setting the routes to the other nodes failed; retried at the next regeneration")


def remote_named_ports(peers: ClusterPeers) -> Mapping[IPv4Address | IPv6Address, tuple[tuple[str, int, int], ...]]:
    """Each other node's endpoint address -> the ports it serves by name."""
    return peers.named_ports


def node_labels(peers: ClusterPeers) -> dict[IPv4Address | IPv6Address, Mapping[str, str]]:
    """Each other node's addresses -> the labels it published."""
    return {a: n.labels for n in peers.nodes.values() for a in (n.ip, n.ip6) if a is not None and n.labels}


def node_ips(peers: ClusterPeers) -> list[IPv4Address | IPv6Address]:
    """The other nodes' addresses (remote-node), both families."""
    return [a for n in peers.nodes.values() for a in (n.ip, n.ip6) if a is not None]
