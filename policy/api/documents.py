"""The three accepted kinds as whole Kubernetes objects.

CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy carry a rule in
`spec` and/or a list in `specs`; NetworkPolicy carries its own spec. Each
kind demands its apiVersion. `status` is the API server's and is ignored.
`metadata` is the one shape that tolerates unknown fields: objects exported
from a cluster carry uid, resourceVersion, managedFields and the like, none
of which changes what the policy means. Pure.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationInfo, field_validator

from policy.api.base import Strict
from policy.api.netpol import NetworkPolicySpec
from policy.api.problems import fail, type_name
from policy.api.rule import CiliumRule
from policy.endpoint import DEFAULT_NAMESPACE
from policy.model import KIND_CCNP, KIND_CNP, KIND_NP

API_CILIUM = "cilium.io/v2"
API_NETWORKING = "networking.k8s.io/v1"


def _non_empty(v: Any) -> str:
    if not isinstance(v, str):
        fail(f"must be a string, got {type_name(v)}")
    if not v:
        fail("must not be empty")
    return v


NonEmpty = Annotated[str, PlainValidator(_non_empty)]


class Metadata(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, defer_build=True)

    name: NonEmpty
    namespace: NonEmpty = DEFAULT_NAMESPACE


class Document(Strict):
    KIND: ClassVar[str]
    API_VERSION: ClassVar[str]

    apiVersion: Any = Field(None, validate_default=True)
    kind: str
    metadata: Metadata
    status: Any = None

    @field_validator("apiVersion", mode="plain")
    @classmethod
    def _api_version(cls, v: Any) -> str:
        if v != cls.API_VERSION:
            fail(f"{cls.KIND} needs apiVersion {cls.API_VERSION}, got {v!r}")
        return v


class CiliumNetworkPolicy(Document):
    KIND = KIND_CNP
    API_VERSION = API_CILIUM

    specs: list[CiliumRule] | None = None
    # Checked as a field (after `specs`), not after the whole object, so a
    # missing rule is reported even when another field is wrong too.
    spec: CiliumRule | None = Field(None, validate_default=True)

    @field_validator("spec")
    @classmethod
    def _has_rules(cls, v: CiliumRule | None, info: ValidationInfo) -> CiliumRule | None:
        if v is None and "specs" in info.data and info.data["specs"] is None:
            fail("required (spec or specs)")
        return v

    def rules(self) -> list[tuple[str, CiliumRule]]:
        """(field path, rule) of `spec` and every `specs` item."""
        out = [("spec", self.spec)] if self.spec is not None else []
        return out + [(f"specs[{i}]", s) for i, s in enumerate(self.specs or ())]


class CiliumClusterwideNetworkPolicy(CiliumNetworkPolicy):
    KIND = KIND_CCNP


class NetworkPolicy(Document):
    KIND = KIND_NP
    API_VERSION = API_NETWORKING

    spec: NetworkPolicySpec


DOCUMENTS: dict[str, type[Document]] = {d.KIND: d for d in (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy)}
