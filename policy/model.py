"""Typed, validated policies: what the parser produces and the compiler reads.

Every shape here is frozen and hashable so the compiler can cache on it.
Kubernetes and Cilium differences are resolved at parse time (namespace
scoping folded into selectors, "no peers" made explicit as AnyPeer), so the
compiler sees one uniform model. Pure, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from policy.compiled import Direction, HTTPRule, PortRange, Protocol, RuleRef
from policy.families import IPNetwork
from policy.selector import LabelSelector

KIND_CNP = "CiliumNetworkPolicy"
KIND_CCNP = "CiliumClusterwideNetworkPolicy"
KIND_NP = "NetworkPolicy"

# Entities (Cilium's names). "all" is identity 0; "cluster" and the world
# ones are sets that grow with endpoints and CIDR prefixes (see compiler.py;
# what world, world-ipv4 and world-ipv6 select per stack: families.py).
ENTITIES = (
    "all",
    "cluster",
    "world",
    "world-ipv4",
    "world-ipv6",
    "host",
    "remote-node",
    "init",
    "health",
    "unmanaged",
    "kube-apiserver",
    "ingress",
)


@dataclass(frozen=True, slots=True)
class EndpointPeer:
    """Label identities matching a selector (namespace scoping already in it)."""

    selector: LabelSelector


@dataclass(frozen=True, slots=True)
class EntityPeer:
    name: str


@dataclass(frozen=True, slots=True)
class CIDRPeer:
    """A prefix minus prefixes inside it, all of one family (the parser
    refuses an except of the other family)."""

    net: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True, slots=True)
class AnyPeer:
    """Every peer: identity 0."""


Peer = EndpointPeer | EntityPeer | CIDRPeer | AnyPeer


@dataclass(frozen=True, slots=True)
class PortSpec:
    protocol: Protocol
    ports: PortRange


@dataclass(frozen=True, slots=True)
class PortRule:
    """Ports ORed; `http` is None for an L4-only rule. `server_names` (TLS
    SNI, lower-case) makes the rule inspect the ClientHello instead; the
    parser never sets both."""

    ports: tuple[PortSpec, ...]
    http: tuple[HTTPRule, ...] | None = None
    server_names: tuple[str, ...] | None = None

    @property
    def l7(self) -> bool:
        """Whether the rule sends its port to the proxy."""
        return self.http is not None or self.server_names is not None


@dataclass(frozen=True, slots=True)
class Rule:
    """One ingress/egress (deny) item: peers x port rules.

    Empty `port_rules` means every protocol and port (an L3-only rule).
    Empty `peers` selects nothing (a CNP `ingress: [{}]`).
    """

    direction: Direction
    deny: bool
    peers: tuple[Peer, ...]
    port_rules: tuple[PortRule, ...]
    ref: RuleRef


@dataclass(frozen=True, slots=True)
class PolicySpec:
    subject: LabelSelector  # endpoints this spec applies to (namespace folded in)
    rules: tuple[Rule, ...]
    enforce_ingress: bool
    enforce_egress: bool


@dataclass(frozen=True, slots=True)
class Policy:
    kind: str
    name: str
    namespace: str | None  # None for clusterwide
    specs: tuple[PolicySpec, ...]
    source: str = ""
    doc: int | None = None

    @property
    def ref_name(self) -> str:
        """RuleRef.policy: "namespace/name", or "name" when clusterwide."""
        return self.name if self.namespace is None else f"{self.namespace}/{self.name}"

    @property
    def key(self) -> str:
        """Unique per policy object: "Kind/namespace/name" or "Kind/name"."""
        return f"{self.kind}/{self.ref_name}"

    def cidrs(self) -> set[IPNetwork]:
        out: set[IPNetwork] = set()
        for spec in self.specs:
            for rule in spec.rules:
                for peer in rule.peers:
                    if isinstance(peer, CIDRPeer):
                        out.add(peer.net)
                        out.update(peer.excepts)
        return out
