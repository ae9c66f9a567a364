"""README.md's table "Policy language: every CiliumNetworkPolicy field"
says, for every field the policy models in policy/api/ know, whether ciliate
supports it, and says it truly.

Nothing here lists the fields or their status: the fields come from walking
the pydantic models from the rule (`CiliumRule`) down, and a field's status
comes from validating a policy that sets it: refused when the error located
at that field says "not supported", supported otherwise (a field of the
other direction, refused as "unknown field", is not a field of that level).
Label selectors (Kubernetes' LabelSelector) are not walked into.
"""

from __future__ import annotations

import re
import types
import typing
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import BaseModel

from policy.api.rule import CiliumRule
from policy.api.selectors import Requirement, Selector
from policy.errors import PolicyErrors
from policy.parse import parse_object

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Policy language: every CiliumNetworkPolicy field"
ROOT = "spec"  # the rule level: `spec` and every `specs` item
PROBE = "probe"  # a value no supported field takes, so a refusal is the field's own

Chain = tuple[tuple[str, bool], ...]  # (alias, is a list) from the rule down to a model


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The policy model a field holds, and whether it holds a list of them."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _model_in(args[0])
    if origin in (Union, types.UnionType):
        for a in args:
            model, many = _model_in(a)
            if model is not None:
                return model, many
        return None, False
    if origin is list:
        model, _ = _model_in(args[0])
        return model, model is not None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if issubclass(annotation, (Selector, Requirement)):
            return None, False
        return annotation, False
    return None, False


def _walk(model: type[BaseModel], chain: Chain, out: list[tuple[Chain, str]]) -> None:
    for name, info in model.model_fields.items():
        alias = info.alias or name
        out.append((chain, alias))
        inner, many = _model_in(info.annotation)
        if inner is not None:
            _walk(inner, chain + ((alias, many),), out)


def _status(chain: Chain, field: str) -> str | None:
    """"supported" or "refused" by the validator; None if not a field there."""
    spec: dict[str, Any] = {"endpointSelector": {}}
    node = spec
    for alias, many in chain:
        child: dict[str, Any] = {}
        node[alias] = [child] if many else child
        node = child
    node[field] = PROBE
    path = ROOT + "".join(f".{a}[0]" if many else f".{a}" for a, many in chain) + f".{field}"
    doc = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "probe"}, "spec": spec}
    try:
        parse_object(doc, "probe.yaml")
        reasons: list[str] = []
    except PolicyErrors as e:
        reasons = [err.reason for err in e.errors if err.field == path]
    if any(r.startswith("not supported") for r in reasons):
        return "refused"
    if any(r.startswith("unknown field") for r in reasons):
        return None
    return "supported"


@cache
def code_fields() -> dict[tuple[str, str], set[str]]:
    """(level, field) -> the statuses the validator gives it wherever that level occurs."""
    found: list[tuple[Chain, str]] = []
    _walk(CiliumRule, (), found)
    out: dict[tuple[str, str], set[str]] = {}
    for chain, field in found:
        status = _status(chain, field)
        if status is not None:
            level = chain[-1][0] if chain else ROOT
            out.setdefault((level, field), set()).add(status)
    return out


def table() -> tuple[dict[tuple[str, str], str], str]:
    """(level, field) -> the status the README gives; and the section's text."""
    text = README.read_text()
    assert SECTION + "\n" in text, f"README.md has no section {SECTION!r}"
    section = text.split(SECTION + "\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[tuple[str, str], str] = {}
    for levels, field, status in re.findall(r"^\| ([^|]+) \| `(\w+)` \| (supported|refused) ", section, re.M):
        for level in re.findall(r"`(\w+)`", levels):
            assert (level, field) not in rows, f"{level}.{field} is in the table twice"
            rows[(level, field)] = status
    return rows, section


def test_the_walk_finds_the_levels_the_table_is_about():
    """Guards the test itself: a walk that found nothing would pass anything."""
    levels = {level for level, _ in code_fields()}
    assert {ROOT, "ingress", "egressDeny", "toPorts", "ports", "rules", "http", "icmps", "fields", "toServices",
            "k8sService", "k8sServiceSelector"} <= levels
    assert code_fields()[("ingress", "fromRequires")] == {"refused"}
    assert code_fields()[("egress", "toEndpoints")] == {"supported"}
    assert ("ingress", "toEndpoints") not in code_fields()  # an egress field, refused in ingress as unknown


def test_every_field_of_the_models_is_in_the_table():
    rows, _ = table()
    missing = sorted(f"{level}.{field}" for level, field in code_fields() if (level, field) not in rows)
    assert not missing, f"fields the policy models know but README.md's table does not list: {missing}"


def test_the_table_lists_no_field_the_models_do_not_know_there():
    rows, _ = table()
    stale = sorted(f"{level}.{field}" for level, field in rows if (level, field) not in code_fields())
    assert not stale, f"README.md's table lists fields the policy models do not have at that level: {stale}"


def test_the_table_says_what_the_validator_does():
    rows, _ = table()
    wrong = []
    for (level, field), statuses in sorted(code_fields().items()):
        said = rows.get((level, field))
        if said is None:
            continue
        assert len(statuses) == 1, f"{level}.{field} is supported in some places and refused in others: {statuses}"
        if said != next(iter(statuses)):
            wrong.append(f"{level}.{field}: README says {said}, the validator says {next(iter(statuses))}")
    assert not wrong, wrong
