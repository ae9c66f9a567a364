"""Endpoints as the policy layer sees them, and the label conventions.

An endpoint is an id, its labels and its address (the labels that make its
identity are policy/identity.py's business). Label keys may carry a
source prefix ("k8s:app"); selection ignores the source, so "k8s:app=web" and
"app=web" are the same label to a selector. Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address

NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
DEFAULT_NAMESPACE = "default"
# Namespace labels are visible to selectors as pod labels under this prefix
# (Cilium's convention), which is how NetworkPolicy namespaceSelector works.
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."
DEFAULT_SOURCE = "k8s"


def split_source(key: str) -> tuple[str, str]:
    """("k8s:app") -> ("k8s", "app"); no prefix -> the default source."""
    source, sep, rest = key.partition(":")
    if sep:
        return source, rest
    return DEFAULT_SOURCE, key


def strip_source(key: str) -> str:
    return split_source(key)[1]


def namespace_of(labels: Mapping[str, str]) -> str:
    for k, v in labels.items():
        if strip_source(k) == NAMESPACE_LABEL:
            return v
    return DEFAULT_NAMESPACE


@dataclass(frozen=True)
class Endpoint:
    id: int
    labels: Mapping[str, str] = field(default_factory=dict)
    ipv4: IPv4Address | None = None

    @property
    def namespace(self) -> str:
        return namespace_of(self.labels)

    def __hash__(self) -> int:
        return hash((self.id, tuple(sorted(self.labels.items())), self.ipv4))
