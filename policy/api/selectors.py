"""Label selectors as policies write them (Kubernetes' LabelSelector).

Keys may carry Cilium's source prefix (`k8s:app`); keys and values follow
Kubernetes' label syntax (policy/labels.py). A peer selector
(`fromEndpoints`/`toEndpoints`) may instead name a reserved identity with a
single `reserved:<entity>` label, Cilium's spelling of an entity. Pure.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, PlainValidator, model_validator

from policy.api.base import Strict
from policy.api.problems import fail, type_name
from policy.endpoint import strip_source
from policy.labels import selector_key_problem, value_problem
from policy.model import ENTITIES

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
RESERVED_PREFIX = "reserved:"


def _key(key: str) -> str:
    if not strip_source(key):
        fail("label key must not be empty")
    if problem := selector_key_problem(key):
        fail(problem)
    return key


def _value(value: Any) -> str:
    if not isinstance(value, str):
        fail(f"label value must be a string, got {type_name(value)}")
    if problem := value_problem(value):
        fail(problem)
    return value


def _operator(op: Any) -> str:
    if op not in OPERATORS:
        fail(f"unknown operator {op!r}: expected In, NotIn, Exists or DoesNotExist")
    return op


LabelKey = Annotated[str, AfterValidator(_key)]
LabelValue = Annotated[str, PlainValidator(_value)]


class Requirement(Strict):
    key: LabelKey
    operator: Annotated[str, PlainValidator(_operator)]
    values: list[LabelValue] = []

    @model_validator(mode="after")
    def _values_fit_operator(self) -> Requirement:
        if self.operator in ("In", "NotIn") and not self.values:
            fail(f"operator {self.operator} needs at least one value", at=("values",))
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            fail(f"operator {self.operator} takes no values", at=("values",))
        return self


class Selector(Strict):
    """Every requirement must hold; an empty selector selects everything."""

    # Not nullable: a null here must not quietly widen a selector to "everything".
    matchLabels: dict[LabelKey, LabelValue] = {}
    matchExpressions: list[Requirement] = []


class PeerSelector(Selector):
    """A `fromEndpoints`/`toEndpoints` item: labels, or one reserved entity."""

    @model_validator(mode="after")
    def _reserved_alone(self) -> PeerSelector:
        labels = self.matchLabels
        reserved = [k for k in labels if k.startswith(RESERVED_PREFIX)]
        if not reserved:
            return self
        at = ("matchLabels", reserved[0])
        if len(labels) != 1 or "matchExpressions" in self.model_fields_set:
            fail("not supported: reserved labels combined with other labels (use fromEntities/toEntities)", at=at)
        name = reserved[0].removeprefix(RESERVED_PREFIX)
        if name not in ENTITIES or name in ("all", "cluster"):
            fail(f"unknown reserved label {name!r}", at=at)
        return self

    @property
    def entity(self) -> str | None:
        """The entity a reserved-label selector names, else None."""
        keys = list(self.matchLabels)
        if len(keys) == 1 and keys[0].startswith(RESERVED_PREFIX):
            return keys[0].removeprefix(RESERVED_PREFIX)
        return None
