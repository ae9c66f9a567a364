"""A Cilium rule (one `spec`/`specs` item of CNP and CCNP): who it selects,
its ingress/egress allow and deny items, and the default-deny switch.

An item is its direction's peers (peers.py) plus `toPorts`; deny items take
L4 port rules only. `labels` and `description` are rule metadata Cilium
keeps and we accept without effect. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import Field, ValidationInfo, field_validator

from policy.api.base import Strict
from policy.api.peers import EgressAllowPeers, EgressDenyPeers, IngressPeers
from policy.api.ports import DenyPortRule, PortRule
from policy.api.problems import UP, fail, unsupported
from policy.api.selectors import Selector


def _not_with_icmps(ports: Any, info: ValidationInfo) -> Any:
    """As Cilium: one item matches ports or ICMP types, not both (write two items)."""
    if ports and info.data.get("icmps"):
        fail("toPorts cannot be combined with icmps in one rule: write a separate rule for each")
    return ports


def _no_dns_on_ingress(ports: Any) -> Any:
    """As Cilium: the DNS proxy sits on a pod's egress, where its queries
    leave; nothing would read DNS rules on ingress."""
    for i, p in enumerate(ports or ()):
        if isinstance(p, PortRule) and p.rules is not None and p.rules.dns is not None:
            fail("DNS rules apply to egress only", at=(i, "rules", "dns"))
    return ports


class IngressRule(IngressPeers):
    toPorts: list[PortRule] | None = None
    _ports_or_icmps = field_validator("toPorts")(_not_with_icmps)
    _dns_egress_only = field_validator("toPorts")(_no_dns_on_ingress)


class IngressDenyRule(IngressPeers):
    toPorts: list[DenyPortRule] | None = None
    _ports_or_icmps = field_validator("toPorts")(_not_with_icmps)


class EgressRule(EgressAllowPeers):
    toPorts: list[PortRule] | None = None
    _ports_or_icmps = field_validator("toPorts")(_not_with_icmps)


class EgressDenyRule(EgressDenyPeers):
    toPorts: list[DenyPortRule] | None = None
    _ports_or_icmps = field_validator("toPorts")(_not_with_icmps)


# One ingress/egress (deny) item; the peer fields share names across directions.
CiliumItem = IngressRule | IngressDenyRule | EgressRule | EgressDenyRule


class DefaultDeny(Strict):
    """`false` keeps a direction open although the rule has items for it."""

    ingress: bool | None = None
    egress: bool | None = None


class CiliumRule(Strict):
    """One rule: it applies to the endpoints `endpointSelector` selects, or
    (a host policy, CiliumClusterwideNetworkPolicy only) to the nodes
    `nodeSelector` selects by their labels: exactly one of the two."""

    endpointSelector: Selector | None = None
    ingress: list[IngressRule] | None = None
    ingressDeny: list[IngressDenyRule] | None = None
    egress: list[EgressRule] | None = None
    egressDeny: list[EgressDenyRule] | None = None
    enableDefaultDeny: DefaultDeny | None = None
    nodeSelector: Selector | None = Field(None, validate_default=True)
    labels: Any = None
    description: Any = None

    @field_validator("nodeSelector")
    @classmethod
    def _one_subject(cls, node: Selector | None, info: ValidationInfo) -> Selector | None:
        if "endpointSelector" not in info.data:
            return node  # endpointSelector itself was wrong: that is the error to read
        if node is not None and info.data["endpointSelector"] is not None:
            fail("a rule selects endpoints (endpointSelector) or nodes (nodeSelector), not both")
        if node is None and info.data["endpointSelector"] is None:
            fail("required: endpointSelector, or nodeSelector for a host policy", at=UP + ("endpointSelector",))
        return node

    @property
    def host(self) -> bool:
        return self.nodeSelector is not None

    def items(self) -> list[tuple[str, Sequence[CiliumItem]]]:
        """(section name, its items) for every section present, in a fixed order."""
        sections = (("ingress", self.ingress), ("ingressDeny", self.ingressDeny), ("egress", self.egress), ("egressDeny", self.egressDeny))
        return [(name, items) for name, items in sections if items is not None]
