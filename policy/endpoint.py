"""Endpoints as the policy layer sees them, and the label conventions.

An endpoint is an id, its labels and its address. Label keys may carry a
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

# Labels that change per pod or per rollout: they must not split identities
# (Cilium excludes the same ones by default).
IGNORED_IDENTITY_LABELS = frozenset(
    {
        "pod-template-hash",
        "controller-revision-hash",
        "pod-template-generation",
        "statefulset.kubernetes.io/pod-name",
        "controller-uid",
        "batch.kubernetes.io/controller-uid",
    }
)


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


def identity_labels(labels: Mapping[str, str]) -> frozenset[str]:
    """The identity-relevant label set, canonical "source:key=value" strings.

    The namespace is always part of it (defaulted), so equal labels in two
    namespaces are two identities.
    """
    out: set[str] = set()
    has_ns = False
    for k, v in labels.items():
        source, key = split_source(k)
        if key in IGNORED_IDENTITY_LABELS:
            continue
        if key == NAMESPACE_LABEL:
            has_ns = True
        out.add(f"{source}:{key}={v}")
    if not has_ns:
        out.add(f"{DEFAULT_SOURCE}:{NAMESPACE_LABEL}={DEFAULT_NAMESPACE}")
    return frozenset(out)


def selectable_labels(label_set: frozenset[str]) -> dict[str, str]:
    """"source:key=value" strings -> {key: value} as selectors see them."""
    out: dict[str, str] = {}
    for s in sorted(label_set):
        kv = s.partition(":")[2] if ":" in s.partition("=")[0] else s
        key, _, value = kv.partition("=")
        out[key] = value
    return out


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
