"""Endpoints as the policy layer sees them, and the label conventions.

An endpoint is an id, its labels and its addresses, one per family (the
labels that make its identity are policy/identity.py's business). A
dual-stack pod is one endpoint with both: its identity, and so every policy
that selects it or names it as a peer, covers both addresses at once. Label keys may carry a
source prefix ("k8s:app"); selection ignores the source, so "k8s:app=web" and
"app=web" are the same label to a selector. Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

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


@dataclass(frozen=True, slots=True, order=True)
class NamedPort:
    """A port the endpoint serves under a name (a Pod's container port), by
    which policies may name it (`port: http`). Names are lower case."""

    name: str
    protocol: int  # policy.compiled.Protocol (TCP, UDP or SCTP), which imports this module
    port: int


@dataclass(frozen=True)
class Endpoint:
    id: int
    labels: Mapping[str, str] = field(default_factory=dict)
    ipv4: IPv4Address | None = None
    ipv6: IPv6Address | None = None
    named_ports: tuple[NamedPort, ...] = ()

    @property
    def addresses(self) -> tuple[IPv4Address | IPv6Address, ...]:
        return tuple(a for a in (self.ipv4, self.ipv6) if a is not None)

    @property
    def namespace(self) -> str:
        return namespace_of(self.labels)

    def __hash__(self) -> int:
        return hash((self.id, tuple(sorted(self.labels.items())), self.ipv4, self.ipv6, self.named_ports))
