"""One Kubernetes object (a dict) -> a validated `Policy`.

The declared shapes in `policy/api/` validate the object and report every
problem at once (field path and reason, as PolicyErrors); what is left here
is the one step from a valid document to `policy.model`: namespace scoping
folded into selectors, NetworkPolicy's "no peers / no ports" made explicit,
reserved-label selectors turned into entities, and the rule references the
trace reports. Pure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from policy import api
from policy.api.documents import CiliumNetworkPolicy, NetworkPolicy
from policy.api.http import PortRuleHTTP, split_header
from policy.api.netpol import NetworkPolicySpec
from policy.api.peers import NetworkPolicyPeer, ServiceRef
from policy.api.ports import ICMPRule
from policy.api.ports import PortRule as PortRuleIn
from policy.api.rule import CiliumItem, CiliumRule
from policy.api.selectors import Selector
from policy.compiled import ALL_PORTS, Direction, HeaderMatch, HTTPRule, PortRange, Protocol, RuleRef
from policy.endpoint import NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX, strip_source
from policy.errors import PolicyError, PolicyErrors
from policy.model import (
    KIND_CCNP,
    NO_ENDPOINTS,
    NodePeer,
    AnyPeer,
    CIDRPeer,
    EndpointPeer,
    EntityPeer,
    Peer,
    Policy,
    PolicySpec,
    PortRule,
    PortSpec,
    Rule,
    ServicePeer,
    FQDNPeer,
)
from policy.selector import LabelSelector, Requirement

__all__ = ["parse_object"]

_SECTIONS = {
    "ingress": (Direction.INGRESS, False),
    "ingressDeny": (Direction.INGRESS, True),
    "egress": (Direction.EGRESS, False),
    "egressDeny": (Direction.EGRESS, True),
}


def parse_object(obj: Any, source: str, doc: int | None = None) -> Policy:
    """One Kubernetes object -> Policy, or raise PolicyErrors listing every problem."""

    def errors(field: str, reason: str) -> PolicyErrors:
        return PolicyErrors([PolicyError(source, doc, field, reason)])

    if not isinstance(obj, dict):
        raise errors("", f"must be a mapping, got {api.type_name(obj)}")
    kind = obj.get("kind")
    shape = api.DOCUMENTS.get(kind) if isinstance(kind, str) else None
    if shape is None:
        raise errors("kind", f"unknown kind {kind!r}: expected one of {', '.join(api.DOCUMENTS)}")
    try:
        document = shape.model_validate(obj)
    except ValidationError as e:
        raise PolicyErrors(api.policy_errors(e, source, doc)) from None
    return _policy(document, source, doc)


def _policy(d: api.Document, source: str, doc: int | None) -> Policy:
    namespace = None if d.KIND == KIND_CCNP else d.metadata.namespace
    ref = d.metadata.name if namespace is None else f"{namespace}/{d.metadata.name}"
    if isinstance(d, NetworkPolicy):
        specs = (_np_spec(d.spec, d.metadata.namespace, ref),)
    else:
        assert isinstance(d, CiliumNetworkPolicy)
        problems = [PolicyError(source, doc, at, why) for path, rule in d.rules() for at, why in _host_problems(rule, path, namespace)]
        if problems:
            raise PolicyErrors(problems)
        specs = tuple(_cilium_spec(rule, path, d.KIND, namespace, ref) for path, rule in d.rules())
    return Policy(d.KIND, d.metadata.name, namespace, specs, source, doc)


# ---------------------------------------------------------------- selectors


def _selector(s: Selector, key_map: Callable[[str], str] = strip_source) -> LabelSelector:
    reqs = [Requirement(key_map(k), "In", (v,)) for k, v in s.matchLabels.items()]
    reqs += [Requirement(key_map(e.key), e.operator, tuple(sorted(set(e.values)))) for e in s.matchExpressions]
    return LabelSelector.of(reqs)


def _in_namespace(ns: str) -> LabelSelector:
    return LabelSelector.of([Requirement(NAMESPACE_LABEL, "In", (ns,))])


def _namespace_key(key: str) -> str:
    """A namespaceSelector key -> the pod label Cilium exposes it as."""
    key = strip_source(key)
    if key == "kubernetes.io/metadata.name":
        return NAMESPACE_LABEL
    return NAMESPACE_LABELS_PREFIX + key


# ---------------------------------------------------------------- Cilium


def _host_problems(r: CiliumRule, path: str, namespace: str | None) -> list[tuple[str, str]]:
    """What a host policy (nodeSelector) may not say, as Cilium refuses it."""
    if not r.host:
        return []
    if namespace is not None:
        return [(f"{path}.nodeSelector", "nodeSelector needs a CiliumClusterwideNetworkPolicy: a node belongs to no namespace")]
    out = []
    for section, items in r.items():
        for i, item in enumerate(items):
            if getattr(item, "fqdns", None):
                out.append((f"{path}.{section}[{i}].toFQDNs",
                            "not supported in a host policy: the node's own DNS queries do not pass the DNS proxy"))
            for j, pr in enumerate(item.toPorts or ()):
                for name, value in (("rules", getattr(pr, "rules", None)), ("serverNames", getattr(pr, "serverNames", None))):
                    if value:
                        out.append((f"{path}.{section}[{i}].toPorts[{j}].{name}",
                                    "not supported in a host policy: the node's own traffic is not redirected to the proxy (L3/L4 only)"))
    return out


def _cilium_spec(r: CiliumRule, path: str, kind: str, namespace: str | None, ref: str) -> PolicySpec:
    node_subject = None
    if r.nodeSelector is not None:
        subject, node_subject = NO_ENDPOINTS, _selector(r.nodeSelector)
    else:
        assert r.endpointSelector is not None
        subject = _selector(r.endpointSelector)
    if namespace is not None:
        subject = subject.and_(_in_namespace(namespace))
    rules: list[Rule] = []
    enforce = {Direction.INGRESS: False, Direction.EGRESS: False}
    for section, items in r.items():
        direction, deny = _SECTIONS[section]
        enforce[direction] |= bool(items)
        for i, item in enumerate(items):
            rules.append(_cilium_rule(item, direction, deny, namespace, RuleRef(kind, ref, f"{path}.{section}[{i}]")))
    if r.enableDefaultDeny is not None:
        # Only an explicit false opens a direction; true cannot enforce one without items.
        if r.enableDefaultDeny.ingress is False:
            enforce[Direction.INGRESS] = False
        if r.enableDefaultDeny.egress is False:
            enforce[Direction.EGRESS] = False
    return PolicySpec(subject, tuple(rules), enforce[Direction.INGRESS], enforce[Direction.EGRESS], node_subject)


def _cilium_rule(item: CiliumItem, direction: Direction, deny: bool, namespace: str | None, ref: RuleRef) -> Rule:
    peers: list[Peer] = []
    for s in item.endpoints or ():
        if s.entity is not None:
            peers.append(EntityPeer(s.entity))
            continue
        sel = _selector(s)
        if namespace is not None and not sel.mentions(NAMESPACE_LABEL):
            sel = sel.and_(_in_namespace(namespace))
        peers.append(EndpointPeer(sel))
    peers += [CIDRPeer(net) for net in item.cidrs or ()]
    peers += [CIDRPeer(c.cidr, tuple(sorted(set(c.excepts or ())))) for c in item.cidr_sets or ()]
    peers += [AnyPeer() if e == "all" else EntityPeer(e) for e in item.entities or ()]
    # Nodes are not namespaced: a node selector is taken as written.
    peers += [NodePeer(_selector(s)) for s in item.nodes or ()]
    services = getattr(item, "services", None) or ()  # egress allow items only (api/peers.py)
    peers += [_service_peer(s) for s in services]
    fqdns = getattr(item, "fqdns", None) or ()  # egress allow items only
    peers += [FQDNPeer(f.selector()) for f in fqdns]
    port_rules = tuple(_port_rule(p) for p in item.toPorts or ()) + tuple(_icmp_rule(r) for r in item.icmps or ())
    # Cilium: an L4-only rule applies to every peer. A toServices rule is not
    # L4-only even when no Service matches: it then selects nothing; nor is
    # a toFQDNs rule before its names resolved.
    if port_rules and not (item.endpoints or item.cidrs or item.cidr_sets or item.entities or item.nodes or services
                           or fqdns):
        peers.append(AnyPeer())
    return Rule(direction, deny, tuple(dict.fromkeys(peers)), port_rules, ref)


def _service_peer(s: ServiceRef) -> ServicePeer:
    # No namespace default: Cilium matches an omitted namespace as "any"
    # (pkg/policy/k8s/service.go), for CNP and CCNP alike.
    if s.k8sService is not None:
        return ServicePeer(s.k8sService.namespace, name=s.k8sService.serviceName)
    assert s.k8sServiceSelector is not None
    return ServicePeer(s.k8sServiceSelector.namespace, selector=_selector(s.k8sServiceSelector.selector))


def _port_rule(p: PortRuleIn) -> PortRule:
    specs = tuple(PortSpec(x.protocol, x.ports, x.name) for x in p.ports or ()) or (PortSpec(Protocol.ANY, ALL_PORTS),)
    rules = p.rules.http if p.rules is not None else None
    http = tuple(dict.fromkeys(_http(h) for h in rules)) if rules else None
    # An empty serverNames restricts nothing (Cilium): an L4 rule.
    names = tuple(dict.fromkeys(p.serverNames)) if p.serverNames else None
    # An empty dns list, as an empty http list, restricts nothing.
    dns_in = p.rules.dns if p.rules is not None else None
    dns = tuple(dict.fromkeys(d.selector() for d in dns_in)) if dns_in else None
    return PortRule(specs, http, names, dns)


def _icmp_rule(r: ICMPRule) -> PortRule:
    # As Cilium: an item without fields names no type, which is every L4.
    specs = tuple(PortSpec(f.protocol, PortRange(f.type, f.type)) for f in r.fields or ())
    return PortRule(tuple(dict.fromkeys(specs)) or (PortSpec(Protocol.ANY, ALL_PORTS),))


def _http(h: PortRuleHTTP) -> HTTPRule:
    headers = {HeaderMatch(name.lower(), value) for name, value in map(split_header, h.headers or ())}
    headers |= {HeaderMatch(m.name.lower(), m.value or None) for m in h.headerMatches or ()}
    # An empty pattern is Cilium's "not set".
    return HTTPRule(h.method or None, h.path or None, h.host or None, tuple(sorted(headers, key=lambda m: (m.name, m.value or ""))))


# ---------------------------------------------------------------- NetworkPolicy


def _np_spec(s: NetworkPolicySpec, namespace: str, ref: str) -> PolicySpec:
    types = s.directions()
    rules: list[Rule] = []
    for section, items, direction in (("ingress", s.ingress, Direction.INGRESS), ("egress", s.egress, Direction.EGRESS)):
        if section.capitalize() not in types:
            continue
        for i, item in enumerate(items or ()):
            # A missing or empty from/to means every peer; missing ports every port.
            peers = [_np_peer(p, namespace) for p in item.peers] if item.peers else [AnyPeer()]
            ports = tuple(PortSpec(p.protocol, p.ports, p.name) for p in item.ports or ())
            port_rules = (PortRule(ports),) if ports else ()
            rules.append(Rule(direction, False, tuple(dict.fromkeys(peers)), port_rules, RuleRef(NetworkPolicy.KIND, ref, f"spec.{section}[{i}]")))
    subject = _selector(s.podSelector).and_(_in_namespace(namespace))
    return PolicySpec(subject, tuple(rules), "Ingress" in types, "Egress" in types)


def _np_peer(p: NetworkPolicyPeer, namespace: str) -> Peer:
    if p.ipBlock is not None:
        return CIDRPeer(p.ipBlock.cidr, tuple(sorted(set(p.ipBlock.excepts or ()))))
    sel = LabelSelector()
    if p.podSelector is not None:
        sel = sel.and_(_selector(p.podSelector))
    if p.namespaceSelector is not None:
        sel = sel.and_(_selector(p.namespaceSelector, key_map=_namespace_key))
    else:
        sel = sel.and_(_in_namespace(namespace))
    return EndpointPeer(sel)
