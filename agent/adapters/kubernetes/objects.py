"""API objects as the agent core takes them: a policy object through the
same parser as a policy file (a Pod and its Namespace as endpoint labels are
pod_labels.py's).

A policy from the API is named `k8s:<Kind>/<namespace>/<name>` (or
`k8s:<Kind>/<name>` when clusterwide): that is the SOURCE of its error lines
(`k8s:CiliumNetworkPolicy/ns/name: spec.ingress[0]: reason`) and the source
`ciliate policy get` shows. Its key in the policy book and the compiler
carries the same `k8s:` prefix, so a file and an API object with the same
kind, namespace and name are two policies, never one shadowing the other.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from agent.core.ports import LoadedFile, PolicyProblem
from policy.errors import PolicyErrors
from policy.load import INTERNAL_ERROR
from policy.model import Policy
from policy.parse import parse_object

SOURCE_PREFIX = "k8s:"


@dataclass(frozen=True, slots=True)
class ApiPolicy(Policy):
    """A policy.model.Policy read from the API server: same rules, own key."""

    @property
    def key(self) -> str:
        return SOURCE_PREFIX + Policy.key.fget(self)  # type: ignore[attr-defined]


def source_name(kind: str, obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{SOURCE_PREFIX}{kind}/{ns}/{meta.get('name')}" if ns else f"{SOURCE_PREFIX}{kind}/{meta.get('name')}"


def load_object(kind: str, obj: Mapping[str, Any]) -> LoadedFile:
    """Validate one API object with policy/'s parser; never raises for bad content."""
    source = source_name(kind, obj)
    body = {k: v for k, v in obj.items() if k != "status"}  # the status is ours, not policy
    body.setdefault("kind", kind)
    try:
        pol = parse_object(body, source)
    except PolicyErrors as exc:
        return LoadedFile(problems=tuple(_problem(e, obj) for e in exc.errors))
    except RecursionError:
        return LoadedFile(problems=(PolicyProblem(source, "", "document nested too deeply", _name(obj)),))
    except Exception as exc:  # noqa: BLE001 - a parser bug must not stop the watch
        return LoadedFile(problems=(PolicyProblem(source, "", f"{INTERNAL_ERROR}: {type(exc).__name__}: {exc}", _name(obj)),))
    return LoadedFile(policies=(ApiPolicy(**{f.name: getattr(pol, f.name) for f in fields(pol)}),))


def _name(obj: Mapping[str, Any]) -> str | None:
    meta = obj.get("metadata") or {}
    if not meta.get("name"):
        return None
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else str(meta["name"])


def _problem(e, obj: Mapping[str, Any]) -> PolicyProblem:
    return PolicyProblem(source=e.location(), field=e.field, message=e.reason, policy=_name(obj))


def spec_of(obj: Mapping[str, Any]) -> tuple:
    """What a policy's meaning depends on: a status-only write (ours, another
    node's) changes none of it and needs no parse."""
    meta = obj.get("metadata") or {}
    return (meta.get("generation"), obj.get("spec"), obj.get("specs"), meta.get("name"), meta.get("namespace"))


def pod_name(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"
