"""The ports of cluster mode: the rest of the cluster as a shared kvstore
shows it, the store itself, and the routes to the other nodes' pods.

Beside agent/core/ports.py (the single-node ports); the core talks to these
when the agent is one node of a cluster (agent/core/cluster_sync.py),
`agent/adapters/kvstore_state.py` and `node_routing.py` bind them. Pure types,
no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Protocol

@dataclass(frozen=True, slots=True)
class PeerNode:
    """Another node of the cluster, as it published itself."""

    name: str
    ip: IPv4Address
    pod_cidr: IPv4Network
    pod_cidr6: IPv6Network | None = None
    ip6: IPv6Address | None = None  # None: its IPv6 pods are reached via `ip`
    labels: Mapping[str, str] = field(default_factory=dict)  # what fromNodes/toNodes select it by


@dataclass(frozen=True, slots=True)
class ClusterPeers:
    """The rest of the cluster as the shared store last showed it."""

    nodes: Mapping[str, PeerNode] = field(default_factory=dict)
    endpoints: Mapping[IPv4Address | IPv6Address, tuple[int, frozenset[str]]] = field(default_factory=dict)  # address -> identity, labels
    # address -> the (name, protocol, port) it serves by name, for endpoints that serve any
    named_ports: Mapping[IPv4Address | IPv6Address, tuple[tuple[str, int, int], ...]] = field(default_factory=dict)
    # Which of the shared state's peers this is (0: none in particular), and,
    # set by whoever hands it on: the addresses whose entry (endpoint or named
    # ports) differs from the peers numbered `base` (None: take it whole).
    serial: int = 0
    base: int = 0
    changed: frozenset[IPv4Address | IPv6Address] | None = None


class IdentityUnavailable(Exception):
    """The cluster's identity allocator cannot answer now (its store is unreachable)."""


class SharedState(Protocol):
    """Identities, endpoints and nodes shared with the other agents of a
    cluster (kvstore/ on etcd, behind agent/adapters/kvstore_state.py)."""

    async def start(self, on_change: Callable[[], None]) -> None:
        """Connect (in the background when the store is down: never blocks the
        agent's start) and call `on_change` whenever peers() changes."""
        ...

    async def stop(self) -> None:
        """Stop following; this node's entries stay until its lease expires,
        so a restart adopts them."""
        ...

    async def identity_for(self, labels: frozenset[str]) -> int:
        """The cluster-wide identity of this label set (allocated on first
        use, referenced by this node). Raises IdentityUnavailable."""
        ...

    async def publish(
        self,
        endpoints: Mapping[IPv4Address | IPv6Address, tuple[int, frozenset[str]]],
        named_ports: Mapping[IPv4Address | IPv6Address, tuple[tuple[str, int, int], ...]] | None = None,
    ) -> None:
        """This node's endpoints, whole (address -> identity, labels; and the
        ports each serves by name, which other nodes resolve `port: http` by); label
        sets no local endpoint has any more lose this node's reference.
        Kept as desired state and written whenever the store is reachable."""
        ...

    async def set_node_labels(self, labels: Mapping[str, str] | None) -> None:
        """This node's labels as the other nodes see them (their fromNodes/
        toNodes); kept as desired state, written whenever the store is reachable."""
        ...

    def peers(self) -> ClusterPeers: ...

    def changed_since(self, serial: int) -> frozenset[IPv4Address | IPv6Address] | None:
        """The addresses whose entry differs between the peers numbered
        `serial` and peers() now; None when that is no longer known (or
        nodes changed): then the consumer takes peers() whole."""
        ...

    def status(self) -> Mapping[str, Any]:
        """{"ok": bool, "detail": str, ...} for `ciliate status`."""
        ...


class NodeRouting(Protocol):
    """Routes to the other nodes' pods (direct routing over the underlay)."""

    async def setup(self) -> None:
        """Prepare the underlay device (the proxy's cross-node replies); idempotent."""
        ...

    async def set_routes(self, nodes: Mapping[str, PeerNode]) -> None:
        """Each node's pod CIDR via its address; routes of nodes gone are removed."""
        ...
