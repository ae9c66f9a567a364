"""Who a rule talks to: endpoints, entities and CIDRs, per direction.

Cilium names the same peer fields `from*` in ingress rules and `to*` in
egress rules; both land on one set of attribute names (`endpoints`,
`cidrs`, `cidr_sets`, `entities`) so the conversion reads them alike.
Egress rules also name Kubernetes Services (`toServices`, `services`),
which policy/services.py resolves against the cluster's Services. A
field of the other direction, and each Cilium peer kind we do not
implement, is a field of its own with a clear error. Pure.
"""

from __future__ import annotations

from ipaddress import AddressValueError, IPv4Network, IPv6Network, NetmaskValueError, ip_network
from typing import Annotated, Any

from pydantic import Field, PlainValidator, model_validator

from policy.api.base import Strict
from policy.api.http import FQDNSelector
from policy.api.ports import ICMPRule
from policy.api.problems import Loc, fail, fail_all, reject, type_name, unsupported
from policy.api.selectors import PeerSelector, Selector
from policy.families import FAMILY_NAMES, IPNetwork
from policy.model import ENTITIES


def _cidr(v: Any) -> IPNetwork:
    """A prefix of either family, written canonically (host bits set is an
    error for both, as it always was for IPv4: `10.0.0.1/8` and
    `2001:db8::1/32` say two different things and we will not guess which)."""
    if not isinstance(v, str):
        fail(f"must be a string, got {type_name(v)}")
    try:
        net = ip_network(v.strip(), strict=True)
    except (ValueError, AddressValueError, NetmaskValueError) as e:
        fail(f"invalid CIDR {v!r}: {e}")
    if isinstance(net, IPv6Network):
        if net.network_address.scope_id is not None:
            fail(f"invalid CIDR {v!r}: a zone (%{net.network_address.scope_id}) names a link, not addresses")
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            # Kubernetes' strict CIDR validation refuses these too. An IPv4
            # packet is judged by its IPv4 address, so this IPv6 prefix would
            # silently match nothing.
            fail(
                f"not supported: IPv4-mapped IPv6 CIDR {v!r}: IPv4 traffic is matched by its IPv4 address, "
                f"so it would match nothing; write {IPv4Network((mapped, net.prefixlen - 96))}"
            )
    return net


def _non_empty(v: Any) -> str:
    if not isinstance(v, str):
        fail(f"must be a string, got {type_name(v)}")
    if not v:
        fail("must not be empty")
    return v


def _entity(v: Any) -> str:
    if not isinstance(v, str):
        fail(f"must be a string, got {type_name(v)}")
    if v not in ENTITIES:
        fail(f"unknown entity {v!r}: expected one of {', '.join(ENTITIES)}")
    return v


CIDR = Annotated[IPNetwork, PlainValidator(_cidr)]
Entity = Annotated[str, PlainValidator(_entity)]
NonEmpty = Annotated[str, PlainValidator(_non_empty)]


class IPBlock(Strict):
    """A prefix minus some prefixes inside it (NetworkPolicy's ipBlock), all
    of one family."""

    cidr: CIDR
    excepts: list[CIDR] | None = Field(None, alias="except")

    @model_validator(mode="after")
    def _excepts_inside(self) -> IPBlock:
        problems: list[tuple[Loc, str]] = []
        for i, e in enumerate(self.excepts or ()):
            if e.version != self.cidr.version:
                problems.append((("except", i), (
                    f"{e} is {FAMILY_NAMES[e.version]} but cidr {self.cidr} is {FAMILY_NAMES[self.cidr.version]}: "
                    "an except is carved out of its cidr, so it must be of the same family"
                )))
            elif not e.subnet_of(self.cidr):  # type: ignore[arg-type]  # same family, checked above
                problems.append((("except", i), f"{e} is not inside {self.cidr}"))
        fail_all(problems)
        return self


class K8sService(Strict):
    """`toServices[].k8sService`: one Service by name."""

    serviceName: NonEmpty
    namespace: NonEmpty | None = None  # omitted: that name in every namespace (as Cilium matches it)


class K8sServiceSelector(Strict):
    """`toServices[].k8sServiceSelector`: Services by their own labels."""

    selector: Selector
    namespace: NonEmpty | None = None


class ServiceRef(Strict):
    """A `toServices` item: exactly one of the two ways to name Services."""

    k8sService: K8sService | None = None
    k8sServiceSelector: K8sServiceSelector | None = None

    @model_validator(mode="after")
    def _one_way(self) -> ServiceRef:
        if (self.k8sService is None) == (self.k8sServiceSelector is None):
            fail("must set exactly one of k8sService and k8sServiceSelector")
        return self


class CIDRRule(IPBlock):
    """A `fromCIDRSet`/`toCIDRSet` item."""

    cidrGroupRef: Annotated[Any, unsupported("CIDR groups (cidrGroupRef)")] = None
    cidrGroupSelector: Annotated[Any, unsupported("CIDR groups (cidrGroupSelector)")] = None


def _egress_only(field: str) -> Any:
    return reject(f"unknown field ({field} belongs to egress rules)")


def _ingress_only(field: str) -> Any:
    return reject(f"unknown field ({field} belongs to ingress rules)")


class _BothSides(Strict):
    icmps: list[ICMPRule] | None = None
    authentication: Annotated[Any, unsupported("mutual authentication")] = None


class IngressPeers(_BothSides):
    endpoints: list[PeerSelector] | None = Field(None, alias="fromEndpoints")
    cidrs: list[CIDR] | None = Field(None, alias="fromCIDR")
    cidr_sets: list[CIDRRule] | None = Field(None, alias="fromCIDRSet")
    entities: list[Entity] | None = Field(None, alias="fromEntities")
    fromRequires: Annotated[Any, unsupported("fromRequires")] = None
    fromGroups: Annotated[Any, unsupported("fromGroups")] = None
    nodes: list[Selector] | None = Field(None, alias="fromNodes")
    toEndpoints: Annotated[Any, _egress_only("toEndpoints")] = None
    toCIDR: Annotated[Any, _egress_only("toCIDR")] = None
    toCIDRSet: Annotated[Any, _egress_only("toCIDRSet")] = None
    toEntities: Annotated[Any, _egress_only("toEntities")] = None
    toRequires: Annotated[Any, _egress_only("toRequires")] = None
    toGroups: Annotated[Any, _egress_only("toGroups")] = None
    toNodes: Annotated[Any, _egress_only("toNodes")] = None
    toServices: Annotated[Any, _egress_only("toServices")] = None
    toFQDNs: Annotated[Any, _egress_only("toFQDNs")] = None


class EgressPeers(_BothSides):
    endpoints: list[PeerSelector] | None = Field(None, alias="toEndpoints")
    cidrs: list[CIDR] | None = Field(None, alias="toCIDR")
    cidr_sets: list[CIDRRule] | None = Field(None, alias="toCIDRSet")
    entities: list[Entity] | None = Field(None, alias="toEntities")
    services: list[ServiceRef] | None = Field(None, alias="toServices")
    toRequires: Annotated[Any, unsupported("toRequires")] = None
    toGroups: Annotated[Any, unsupported("toGroups")] = None
    nodes: list[Selector] | None = Field(None, alias="toNodes")
    fqdns: list[FQDNSelector] | None = Field(None, alias="toFQDNs")
    fromEndpoints: Annotated[Any, _ingress_only("fromEndpoints")] = None
    fromCIDR: Annotated[Any, _ingress_only("fromCIDR")] = None
    fromCIDRSet: Annotated[Any, _ingress_only("fromCIDRSet")] = None
    fromEntities: Annotated[Any, _ingress_only("fromEntities")] = None
    fromRequires: Annotated[Any, _ingress_only("fromRequires")] = None
    fromGroups: Annotated[Any, _ingress_only("fromGroups")] = None
    fromNodes: Annotated[Any, _ingress_only("fromNodes")] = None


class EgressAllowPeers(EgressPeers):
    """An `egress` item's peers: toServices stands alone, as in Cilium, which
    refuses it next to another peer field in one rule."""

    @model_validator(mode="after")
    def _services_alone(self) -> EgressAllowPeers:
        others = [a for a, v in (("toEndpoints", self.endpoints), ("toCIDR", self.cidrs), ("toCIDRSet", self.cidr_sets),
                                 ("toEntities", self.entities)) if v]
        if self.services and others:
            fail(f"toServices cannot be combined with {others[0]} in one rule (Cilium refuses it): write two rules",
                 at=("toServices",))
        # toFQDNs peers exist only as the proxy learns them; Cilium refuses
        # them beside other peer kinds in one rule, and so do we.
        others += [a for a, v in (("toNodes", self.nodes), ("toServices", self.services)) if v]
        if self.fqdns and others:
            fail(f"toFQDNs cannot be combined with {others[0]} in one rule (Cilium refuses it): write two rules",
                 at=("toFQDNs",))
        return self


class EgressDenyPeers(EgressPeers):
    # Cilium accepts toServices in egressDeny but never resolves it there, so
    # it denies nothing: refused rather than silently ignored.
    services: Annotated[Any, unsupported("toServices in egressDeny (Cilium never resolves it there)")] = Field(
        None, alias="toServices")
    # Cilium's deny rules have no toFQDNs: a name's addresses are known only
    # after the pod asked, so a deny by name would always come too late.
    fqdns: Annotated[Any, unsupported("toFQDNs in egressDeny (deny the addresses with toCIDR)")] = Field(
        None, alias="toFQDNs")


class NetworkPolicyPeer(Strict):
    """NetworkPolicy's `from`/`to` item: pods (and/or namespaces), or an ipBlock."""

    podSelector: Selector | None = None
    namespaceSelector: Selector | None = None
    ipBlock: IPBlock | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> NetworkPolicyPeer:
        selects = self.podSelector is not None or self.namespaceSelector is not None
        if self.ipBlock is not None and selects:
            fail("ipBlock cannot be combined with podSelector or namespaceSelector")
        if self.ipBlock is None and not selects:
            fail("must set podSelector, namespaceSelector or ipBlock")
        return self
