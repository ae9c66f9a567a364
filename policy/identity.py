"""Numeric identities and proxy ports: stable allocation, persisted as JSON.

`IdentityAllocator` hands out the reserved identities of compiled.py, label
identities from FIRST_LABEL_IDENTITY (one per identity-relevant label set)
and CIDR identities from FIRST_CIDR_IDENTITY (one per prefix).
`ProxyPortAllocator` hands out proxy ports per RedirectKey. Both are pure
in-memory values; the agent persists them with to_json()/from_json() so
numbers survive a restart. No I/O.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Set as AbstractSet
from ipaddress import IPv4Network

from policy.compiled import (
    FIRST_CIDR_IDENTITY,
    FIRST_LABEL_IDENTITY,
    PROXY_PORT_MAX,
    PROXY_PORT_MIN,
    RESERVED_IDENTITIES,
    Direction,
    RedirectKey,
)
from policy.endpoint import identity_labels

RESERVED_BY_NAME: Mapping[str, int] = {name: ident for ident, name in RESERVED_IDENTITIES.items()}


class IdentityAllocator:
    """Label sets and CIDR prefixes -> numbers, stable for the allocator's life."""

    def __init__(self) -> None:
        self._by_labels: dict[frozenset[str], int] = {}
        self._labels: dict[int, frozenset[str]] = {}
        self._by_cidr: dict[IPv4Network, int] = {}
        self._cidrs: dict[int, IPv4Network] = {}
        self._next_label = FIRST_LABEL_IDENTITY
        self._next_cidr = FIRST_CIDR_IDENTITY

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
        return ident

    def for_cidr(self, net: IPv4Network) -> int:
        ident = self._by_cidr.get(net)
        if ident is None:
            ident = self._next_cidr
            self._next_cidr += 1
            self._by_cidr[net] = ident
            self._cidrs[ident] = net
        return ident

    def labels_of(self, ident: int) -> frozenset[str]:
        if ident in RESERVED_IDENTITIES:
            return frozenset({f"reserved:{RESERVED_IDENTITIES[ident]}"})
        if ident in self._labels:
            return self._labels[ident]
        if ident in self._cidrs:
            return frozenset({f"cidr:{self._cidrs[ident]}", "reserved:world"})
        return frozenset()

    def cidr_of(self, ident: int) -> IPv4Network | None:
        return self._cidrs.get(ident)

    @property
    def cidr_count(self) -> int:
        return len(self._by_cidr)

    def release_cidrs(self, nets: Iterable[IPv4Network]) -> None:
        """Forget the identities of these prefixes (unknown ones are ignored).

        Costs one lookup per prefix given, whatever the allocator holds, so a
        caller releasing N prefixes pays O(N), not O(N x allocated).
        """
        for net in nets:
            ident = self._by_cidr.pop(net, None)
            if ident is not None:
                del self._cidrs[ident]

    def release_cidrs_except(self, keep: Collection[IPv4Network]) -> None:
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
            out._cidrs[int(i)] = IPv4Network(n)
            out._by_cidr[IPv4Network(n)] = int(i)
        out._next_label = max([data.get("next_label", FIRST_LABEL_IDENTITY), *(i + 1 for i in out._labels)])
        out._next_cidr = max([data.get("next_cidr", FIRST_CIDR_IDENTITY), *(i + 1 for i in out._cidrs)])
        return out


class ProxyPortsExhausted(Exception):
    """Every port in PROXY_PORT_MIN..PROXY_PORT_MAX is in use."""


class ProxyPortAllocator:
    """RedirectKey -> proxy port; a key keeps its port until released."""

    def __init__(self, lo: int = PROXY_PORT_MIN, hi: int = PROXY_PORT_MAX) -> None:
        self.lo, self.hi = lo, hi
        self._ports: dict[RedirectKey, int] = {}
        self._used: set[int] = set()
        self._cursor = lo

    def allocate(self, key: RedirectKey) -> int:
        port = self._ports.get(key)
        if port is not None:
            return port
        size = self.hi - self.lo + 1
        if len(self._used) >= size:
            raise ProxyPortsExhausted(f"all {size} proxy ports are in use")
        # Round-robin from the last allocation so a just-released port is not
        # reused at once by an unrelated redirect (Envoy may still hold it).
        while self._cursor in self._used:
            self._cursor = self.lo if self._cursor >= self.hi else self._cursor + 1
        port = self._cursor
        self._cursor = self.lo if self._cursor >= self.hi else self._cursor + 1
        self._ports[key] = port
        self._used.add(port)
        return port

    def port_of(self, key: RedirectKey) -> int | None:
        return self._ports.get(key)

    def release(self, key: RedirectKey) -> None:
        port = self._ports.pop(key, None)
        if port is not None:
            self._used.discard(port)

    def retain(self, keys: Iterable[RedirectKey]) -> None:
        """Release every key not in `keys`."""
        keep = set(keys)
        for key in [k for k in self._ports if k not in keep]:
            self.release(key)

    def items(self) -> dict[RedirectKey, int]:
        return dict(self._ports)

    def to_json(self) -> str:
        return json.dumps(
            {
                "ports": [[k.endpoint_id, int(k.direction), k.port, p] for k, p in sorted(self._ports.items())],
                "cursor": self._cursor,
            }
        )

    @classmethod
    def from_json(cls, s: str) -> "ProxyPortAllocator":
        data = json.loads(s)
        out = cls()
        for ep, direction, port, proxy in data.get("ports", []):
            key = RedirectKey(int(ep), Direction(int(direction)), int(port))
            out._ports[key] = int(proxy)
            out._used.add(int(proxy))
        cursor = int(data.get("cursor", PROXY_PORT_MIN))
        out._cursor = cursor if out.lo <= cursor <= out.hi else out.lo
        return out
