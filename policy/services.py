"""`toServices` peers -> the peers behind the Services they name. Pure.

A policy names Services; the compiler knows endpoints, entities and CIDRs.
This is the one step between them, taken with a snapshot of the cluster's
Services (`ServiceCatalog`), as Cilium does it (docs: "Services based";
pkg/policy/k8s/service.go):

- a Service with a selector stands for the pods its selector selects in the
  Service's namespace: an EndpointPeer of that selector with the namespace
  folded in, as the parser folds it into `toEndpoints`;
- a Service without a selector stands for the addresses of its
  EndpointSlices' ready endpoints, each a /32 or /128 CIDRPeer (a CIDR peer
  never selects a local pod, as in Cilium);
- `k8sService` matches by name, `k8sServiceSelector` by the Service's own
  labels; an omitted namespace matches every namespace (Cilium's matching);
- no matching Service, or no catalog at all (no Kubernetes API to read
  Services from), selects nothing: the rule stays, with no peer, so it
  enforces its direction and allows nothing (fail closed).

`resolve` also says, per rule, why a toServices item selects nothing, for
the policy status and the CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import ip_network

from policy.endpoint import NAMESPACE_LABEL
from policy.families import IPAddress
from policy.model import CIDRPeer, EndpointPeer, Peer, Policy, Rule, ServicePeer
from policy.selector import LabelSelector, Requirement

NO_SOURCE = "no Service source (Services are read from the Kubernetes API only)"


@dataclass(frozen=True, slots=True)
class Service:
    """What policy needs of one Service and its EndpointSlices.

    `selector` empty means a Service without a selector; `addresses` are the
    ready endpoints of its EndpointSlices (used only then)."""

    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    selector: Mapping[str, str] = field(default_factory=dict)
    addresses: tuple[IPAddress, ...] = ()


@dataclass(frozen=True, slots=True)
class ServiceCatalog:
    """The cluster's Services at one moment, by (namespace, name)."""

    services: Mapping[tuple[str, str], Service] = field(default_factory=dict)

    @staticmethod
    def of(services: Iterable[Service]) -> ServiceCatalog:
        return ServiceCatalog({(s.namespace, s.name): s for s in services})

    def matching(self, peer: ServicePeer) -> list[Service]:
        out = []
        for (ns, name), svc in sorted(self.services.items()):
            if peer.namespace is not None and ns != peer.namespace:
                continue
            if peer.name is not None:
                if name == peer.name:
                    out.append(svc)
            elif peer.selector is not None and peer.selector.matches(svc.labels):
                out.append(svc)
        return out


@dataclass(frozen=True, slots=True)
class Resolved:
    policy: Policy
    notes: tuple[str, ...] = ()  # "spec.egress[0]: toServices ...: selects nothing: why"


def peers_of(svc: Service) -> list[Peer]:
    """The peers one Service stands for."""
    if svc.selector:
        reqs = [Requirement(k, "In", (v,)) for k, v in sorted(svc.selector.items())]
        reqs.append(Requirement(NAMESPACE_LABEL, "In", (svc.namespace,)))
        return [EndpointPeer(LabelSelector.of(reqs))]
    return [CIDRPeer(ip_network(a)) for a in sorted(set(svc.addresses), key=lambda a: (a.version, a))]


def resolve(policy: Policy, catalog: ServiceCatalog | None) -> Resolved:
    """The policy with every ServicePeer replaced; the same object when it has none."""
    if not policy.services():
        return Resolved(policy)
    notes: list[str] = []
    specs = []
    for spec in policy.specs:
        rules = []
        for rule in spec.rules:
            rules.append(_rule(rule, catalog, notes))
        specs.append(replace(spec, rules=tuple(rules)))
    return Resolved(replace(policy, specs=tuple(specs)), tuple(notes))


def _rule(rule: Rule, catalog: ServiceCatalog | None, notes: list[str]) -> Rule:
    if not any(isinstance(p, ServicePeer) for p in rule.peers):
        return rule
    peers: list[Peer] = []
    for p in rule.peers:
        if not isinstance(p, ServicePeer):
            peers.append(p)
            continue
        if catalog is None:
            notes.append(f"{rule.ref.path}: toServices {p}: selects nothing: {NO_SOURCE}")
            continue
        found = catalog.matching(p)
        if not found:
            notes.append(f"{rule.ref.path}: toServices {p}: selects nothing: no such Service")
        for svc in found:
            behind = peers_of(svc)
            if not behind:
                notes.append(f"{rule.ref.path}: toServices {p}: Service {svc.namespace}/{svc.name} has no selector "
                             "and no ready endpoint: selects nothing")
            peers += behind
    return replace(rule, peers=tuple(dict.fromkeys(peers)))


def resolve_all(policies: Iterable[Policy], catalog: ServiceCatalog | None) -> tuple[list[Policy], list[str]]:
    """Every policy resolved, and the notes each one gave, naming its policy
    (for the CLI, which has no Service source: `catalog` None)."""
    return resolve_each(policies, lambda p: resolve(p, catalog))


def resolve_each(policies: Iterable[Policy], one: Callable[[Policy], Resolved]) -> tuple[list[Policy], list[str]]:
    """`one` applied to every policy; the notes prefixed with their policy."""
    out: list[Policy] = []
    notes: list[str] = []
    for p in policies:
        res = one(p)
        out.append(res.policy)
        notes += [f"{p.kind} {p.ref_name}: {n}" for n in res.notes]
    return out, notes
