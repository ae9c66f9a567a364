"""NetworkPolicy's spec (networking.k8s.io/v1).

Unlike Cilium: a missing or empty `from`/`to` means every peer, missing
`ports` every port, ports default to TCP, and `policyTypes` says which
directions the policy enforces. Pure.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, PlainValidator

from policy.api.base import Strict
from policy.api.peers import NetworkPolicyPeer
from policy.api.ports import NetworkPolicyPort
from policy.api.problems import fail
from policy.api.selectors import Selector

POLICY_TYPES = ("Ingress", "Egress")


def _policy_type(v: Any) -> str:
    if v not in POLICY_TYPES:
        fail(f"unknown policy type {v!r}: expected Ingress or Egress")
    return v


class NetworkPolicyIngressRule(Strict):
    peers: list[NetworkPolicyPeer] | None = Field(None, alias="from")
    ports: list[NetworkPolicyPort] | None = None


class NetworkPolicyEgressRule(Strict):
    peers: list[NetworkPolicyPeer] | None = Field(None, alias="to")
    ports: list[NetworkPolicyPort] | None = None


class NetworkPolicySpec(Strict):
    podSelector: Selector
    policyTypes: list[Annotated[str, PlainValidator(_policy_type)]] | None = None
    ingress: list[NetworkPolicyIngressRule] | None = None
    egress: list[NetworkPolicyEgressRule] | None = None

    def directions(self) -> set[str]:
        """The policy types in force: as written, else Ingress plus Egress when egress is present."""
        if self.policyTypes is not None:
            return set(self.policyTypes)
        return {"Ingress", "Egress"} if self.egress is not None else {"Ingress"}
