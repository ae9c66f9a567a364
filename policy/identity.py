"""Numeric identities: the reserved ones, the identity-relevant labels, and
the allocator for the rest. One home for what an identity is; the other
modules import these names from here (`policy.compiled` re-exports the
reserved constants because redirect/, xds/ and agent/ read them there).

`IdentityAllocator` hands out label identities from FIRST_LABEL_IDENTITY
(one per identity-relevant label set) and CIDR identities from
FIRST_CIDR_IDENTITY (one per prefix). It is a pure in-memory value; the
agent persists it with to_json()/from_json() so numbers survive a restart.
No I/O.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Set as AbstractSet
from ipaddress import IPv4Network, IPv6Network, ip_network

from policy.endpoint import DEFAULT_NAMESPACE, DEFAULT_SOURCE, NAMESPACE_LABEL, split_source

# Reserved identities (Cilium's numbers). 0 means "any peer" in policy keys.
IDENTITY_ANY = 0
IDENTITY_HOST = 1
IDENTITY_WORLD = 2
IDENTITY_UNMANAGED = 3
IDENTITY_HEALTH = 4
IDENTITY_INIT = 5
IDENTITY_REMOTE_NODE = 6
IDENTITY_KUBE_APISERVER = 7
IDENTITY_INGRESS = 8
# The world of one family, on a dual-stack node (policy/families.py says
# which default route carries which world identity in each stack).
IDENTITY_WORLD_IPV4 = 9
IDENTITY_WORLD_IPV6 = 10
RESERVED_IDENTITIES: Mapping[int, str] = {
    IDENTITY_HOST: "host",
    IDENTITY_WORLD: "world",
    IDENTITY_UNMANAGED: "unmanaged",
    IDENTITY_HEALTH: "health",
    IDENTITY_INIT: "init",
    IDENTITY_REMOTE_NODE: "remote-node",
    IDENTITY_KUBE_APISERVER: "kube-apiserver",
    IDENTITY_INGRESS: "ingress",
    IDENTITY_WORLD_IPV4: "world-ipv4",
    IDENTITY_WORLD_IPV6: "world-ipv6",
}
RESERVED_BY_NAME: Mapping[str, int] = {name: ident for ident, name in RESERVED_IDENTITIES.items()}
WORLD_IDENTITIES = frozenset({IDENTITY_WORLD, IDENTITY_WORLD_IPV4, IDENTITY_WORLD_IPV6})
# The `cluster` entity: every reserved identity but the world ones (plus the
# local label identities, which the selector cache adds).
CLUSTER_RESERVED = frozenset(i for i in RESERVED_IDENTITIES if i not in WORLD_IDENTITIES)
# Label-derived identities are allocated upwards from here.
FIRST_LABEL_IDENTITY = 256
# CIDR peers get node-local identities in their own range (as Cilium's local
# identity scope), so they never collide with label identities.
FIRST_CIDR_IDENTITY = 1 << 24

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


def reserved_labels() -> dict[int, frozenset[str]]:
    """identity -> {"reserved:NAME"} for every reserved identity."""
    return {i: frozenset({f"reserved:{n}"}) for i, n in RESERVED_IDENTITIES.items()}


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


class IdentityAllocator:
    """Label sets and CIDR prefixes -> numbers, stable for the allocator's life."""

    def __init__(self) -> None:
        self._by_labels: dict[frozenset[str], int] = {}
        self._labels: dict[int, frozenset[str]] = {}
        self._by_cidr: dict[IPv4Network | IPv6Network, int] = {}
        self._cidrs: dict[int, IPv4Network | IPv6Network] = {}
        self._next_label = FIRST_LABEL_IDENTITY
        self._next_cidr = FIRST_CIDR_IDENTITY
        self._by_node: dict[frozenset[str], int] = {}
        self._node_labels: dict[int, frozenset[str]] = {}
        # Bumped by every change of what to_json() writes: a caller that
        # persists it (every regeneration asks) serializes only on change.
        self.generation = 0

    def for_labels(self, labels: Mapping[str, str]) -> int:
        """The identity of an endpoint with these labels (allocated on first use)."""
        return self.for_label_set(identity_labels(labels))

    def for_label_set(self, label_set: frozenset[str]) -> int:
        ident = self._by_labels.get(label_set)
        if ident is None:
            ident = self._next_label
            self._next_label += 1
            self._by_labels[label_set] = ident
            self._labels[ident] = label_set
            self.generation += 1
        return ident

    def adopt(self, label_set: frozenset[str], ident: int) -> None:
        """Take `ident` for `label_set` as decided elsewhere (the cluster's
        allocator in etcd is authoritative): any other mapping of either side
        is forgotten, so a number allocated locally before the node joined a
        cluster cannot shadow the cluster's."""
        if self._by_labels.get(label_set) == ident:
            return
        self.generation += 1
        old_ident = self._by_labels.pop(label_set, None)
        if old_ident is not None:
            self._labels.pop(old_ident, None)
        old_set = self._labels.pop(ident, None)
        if old_set is not None:
            self._by_labels.pop(old_set, None)
        self._by_labels[label_set] = ident
        self._labels[ident] = label_set
        self._next_label = max(self._next_label, ident + 1) if ident < FIRST_CIDR_IDENTITY else self._next_label

    def for_cidr(self, net: IPv4Network | IPv6Network) -> int:
        ident = self._by_cidr.get(net)
        if ident is None:
            ident = self._next_cidr
            self._next_cidr += 1
            self._by_cidr[net] = ident
            self._cidrs[ident] = net
            self.generation += 1
        return ident

    def for_node(self, labels: Mapping[str, str]) -> int:
        """A remote node's identity, by its labels (nodes with equal labels
        share one): local to this agent, numbered beside the CIDR identities
        (a cluster-allocated pod identity never collides with it), never
        saved: the ipcache is rebuilt from the nodes on every start."""
        label_set = frozenset({"reserved:remote-node", *(f"node:{k}={v}" for k, v in labels.items())})
        ident = self._by_node.get(label_set)
        if ident is None:
            ident = self._next_cidr
            self._next_cidr += 1
            self._by_node[label_set] = ident
            self._node_labels[ident] = label_set
            self.generation += 1
        return ident

    def labels_of(self, ident: int) -> frozenset[str]:
        if ident in RESERVED_IDENTITIES:
            return frozenset({f"reserved:{RESERVED_IDENTITIES[ident]}"})
        if ident in self._labels:
            return self._labels[ident]
        if ident in self._cidrs:
            return frozenset({f"cidr:{self._cidrs[ident]}", "reserved:world"})
        return self._node_labels.get(ident, frozenset())

    @property
    def cidr_count(self) -> int:
        return len(self._by_cidr)

    def release_cidrs(self, nets: Iterable[IPv4Network | IPv6Network]) -> None:
        """Forget the identities of these prefixes (unknown ones are ignored).

        Costs one lookup per prefix given, whatever the allocator holds, so a
        caller releasing N prefixes pays O(N), not O(N x allocated).
        """
        for net in nets:
            ident = self._by_cidr.pop(net, None)
            if ident is not None:
                del self._cidrs[ident]
                self.generation += 1

    def release_cidrs_except(self, keep: Collection[IPv4Network | IPv6Network]) -> None:
        """Forget every CIDR identity whose prefix is not in `keep` (one pass)."""
        keep_set = keep if isinstance(keep, (AbstractSet, Mapping)) else set(keep)
        self.release_cidrs([n for n in self._by_cidr if n not in keep_set])

    def to_json(self) -> str:
        return json.dumps(
            {
                "labels": {str(i): sorted(ls) for i, ls in sorted(self._labels.items())},
                "cidrs": {str(i): str(n) for i, n in sorted(self._cidrs.items())},
                "next_label": self._next_label,
                "next_cidr": self._next_cidr,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, s: str) -> "IdentityAllocator":
        data = json.loads(s)
        out = cls()
        for i, ls in data.get("labels", {}).items():
            out._labels[int(i)] = frozenset(ls)
            out._by_labels[frozenset(ls)] = int(i)
        for i, n in data.get("cidrs", {}).items():
            out._cidrs[int(i)] = ip_network(n)
            out._by_cidr[ip_network(n)] = int(i)
        out._next_label = max([data.get("next_label", FIRST_LABEL_IDENTITY), *(i + 1 for i in out._labels)])
        out._next_cidr = max([data.get("next_cidr", FIRST_CIDR_IDENTITY), *(i + 1 for i in out._cidrs)])
        return out
