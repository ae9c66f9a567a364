"""Typed, validated policies: what the parser produces and the compiler reads.

Every shape here is frozen and hashable so the compiler can cache on it.
Kubernetes and Cilium differences are resolved at parse time (namespace
scoping folded into selectors, "no peers" made explicit as AnyPeer), so the
compiler sees one uniform model. Pure, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from policy.compiled import Direction, HTTPRule, PortRange, Protocol, RuleRef
from policy.dns_names import NameSelector
from policy.families import IPNetwork
from policy.selector import LabelSelector, Requirement

KIND_CNP = "CiliumNetworkPolicy"
KIND_CCNP = "CiliumClusterwideNetworkPolicy"
KIND_NP = "NetworkPolicy"

# The subject of a host policy's spec: no endpoint has a value in an empty
# `In` set, so it selects no pod whatever labels a pod gives itself.
NO_ENDPOINTS = LabelSelector.of([Requirement("reserved:host-policy", "In", ())])

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
class NodePeer:
    """Nodes (fromNodes/toNodes) by their labels: the remote nodes whose
    labels match, and this node itself (the host) when its own do."""

    selector: LabelSelector


@dataclass(frozen=True, slots=True)
class AnyPeer:
    """Every peer: identity 0."""


@dataclass(frozen=True, slots=True)
class ServicePeer:
    """A `toServices` item: Kubernetes Services named (`k8sService`) or
    selected by their own labels (`k8sServiceSelector`), in `namespace`, or
    in every namespace when it is None (Cilium matches an omitted namespace
    that way).

    The compiler never sees one: policy/services.py replaces it, given the
    Services of the cluster, with the pods a Service's selector selects or
    the addresses of a selectorless Service's endpoints, and with nothing
    when no Service matches (fail closed)."""

    namespace: str | None
    name: str | None = None  # k8sService.serviceName
    selector: LabelSelector | None = None  # k8sServiceSelector.selector, over the Service's labels

    def __str__(self) -> str:
        where = self.namespace if self.namespace is not None else "any namespace"
        if self.name is not None:
            return f"k8sService {self.name} in {where}"
        return f"k8sServiceSelector {self.selector} in {where}"


@dataclass(frozen=True, slots=True)
class FQDNPeer:
    """A `toFQDNs` item: the addresses the node's pods resolved, through
    the DNS proxy, for a name the selector matches.

    Like ServicePeer, the compiler never sees one: policy/fqdn_resolve.py
    replaces it, given what the proxy learned, with a host CIDRPeer per
    address, and with nothing before any pod asked (fail closed)."""

    selector: NameSelector

    def __str__(self) -> str:
        return str(self.selector)


# ServicePeer and FQDNPeer only until resolved (policy/services.py,
# policy/fqdn_resolve.py).
Peer = EndpointPeer | NodePeer | EntityPeer | CIDRPeer | AnyPeer | ServicePeer | FQDNPeer


@dataclass(frozen=True, slots=True)
class PortSpec:
    """A protocol and its ports; for ICMP/ICMPv6 the range holds message
    types. A named port (`name` set) has the placeholder range
    policy.api.ports.UNRESOLVED until the compiler resolves it per endpoint
    (policy/named_ports.py)."""

    protocol: Protocol
    ports: PortRange
    name: str | None = None


@dataclass(frozen=True, slots=True)
class PortRule:
    """Ports ORed; `http` is None for an L4-only rule. `server_names` (TLS
    SNI, lower-case) makes the rule inspect the ClientHello instead, `dns`
    (egress only) sends the port's queries to the DNS proxy; the parser sets
    at most one of the three."""

    ports: tuple[PortSpec, ...]
    http: tuple[HTTPRule, ...] | None = None
    server_names: tuple[str, ...] | None = None
    dns: tuple[NameSelector, ...] | None = None

    @property
    def l7(self) -> bool:
        """Whether the rule sends its port to the proxy."""
        return self.http is not None or self.server_names is not None or self.dns is not None


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
    # A host policy (nodeSelector): the nodes, by their labels, whose host
    # endpoint it applies to; its `subject` is then NO_ENDPOINTS.
    node_subject: LabelSelector | None = None


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

    def services(self) -> tuple[ServicePeer, ...]:
        """Every toServices peer, in rule order (empty once resolved)."""
        return tuple(p for spec in self.specs for rule in spec.rules for p in rule.peers if isinstance(p, ServicePeer))

    def fqdns(self) -> tuple[FQDNPeer, ...]:
        """Every toFQDNs peer, in rule order (empty once resolved)."""
        return tuple(p for spec in self.specs for rule in spec.rules for p in rule.peers if isinstance(p, FQDNPeer))

    def dns_rules(self) -> bool:
        """Whether a rule sends DNS to the proxy (toPorts[].rules.dns)."""
        return any(pr.dns is not None for spec in self.specs for rule in spec.rules for pr in rule.port_rules)

    def cidrs(self) -> set[IPNetwork]:
        out: set[IPNetwork] = set()
        for spec in self.specs:
            for rule in spec.rules:
                for peer in rule.peers:
                    if isinstance(peer, CIDRPeer):
                        out.add(peer.net)
                        out.update(peer.excepts)
        return out
