"""Label selectors with Kubernetes semantics, and an index to resolve them fast.

A selector is a conjunction of requirements (matchLabels become `In` with
one value). Keys lose their source prefix. `SelectorIndex` maps label
identities' (key, value) pairs to identity sets, so resolving a selector
touches only the candidates of its most selective `In` requirement. Pure.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


class Op(enum.Enum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True, slots=True, order=True)
class Requirement:
    key: str
    op: str  # Op value; a str so requirements sort
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.op
        if op == "In":
            return labels.get(self.key) in self.values
        if op == "NotIn":
            return labels.get(self.key) not in self.values
        if op == "Exists":
            return self.key in labels
        return self.key not in labels

    def __str__(self) -> str:
        if self.op == "In" and len(self.values) == 1:
            return f"{self.key}={self.values[0]}"
        if self.op == "Exists":
            return self.key
        if self.op == "DoesNotExist":
            return f"!{self.key}"
        return f"{self.key} {self.op.lower()} ({','.join(self.values)})"


@dataclass(frozen=True)
class LabelSelector:
    """Requirements ANDed; no requirements selects everything."""

    requirements: tuple[Requirement, ...] = ()
    # Selectors are dictionary keys on the compiler's hot path: hash once.
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash(self.requirements))

    def __hash__(self) -> int:
        return self._hash

    @staticmethod
    def of(reqs: Iterable[Requirement]) -> "LabelSelector":
        return LabelSelector(tuple(sorted(set(reqs))))

    def and_(self, other: "LabelSelector") -> "LabelSelector":
        return LabelSelector.of(self.requirements + other.requirements)

    def mentions(self, key: str) -> bool:
        return any(r.key == key for r in self.requirements)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements) or "{}"


class SelectorIndex:
    """Label identities indexed by (key, value) for selector resolution."""

    def __init__(self) -> None:
        self.labels: dict[int, Mapping[str, str]] = {}
        self._by_kv: dict[tuple[str, str], set[int]] = {}
        self._by_key: dict[str, set[int]] = {}

    def add(self, identity: int, labels: Mapping[str, str]) -> None:
        if identity in self.labels:
            return
        self.labels[identity] = labels
        for k, v in labels.items():
            self._by_kv.setdefault((k, v), set()).add(identity)
            self._by_key.setdefault(k, set()).add(identity)

    def remove(self, identity: int) -> None:
        labels = self.labels.pop(identity, None)
        if labels is None:
            return
        for k, v in labels.items():
            self._by_kv[(k, v)].discard(identity)
            self._by_key[k].discard(identity)

    def all(self) -> frozenset[int]:
        return frozenset(self.labels)

    def resolve(self, sel: LabelSelector) -> frozenset[int]:
        candidates: set[int] | None = None
        rest: list[Requirement] = []
        for r in sel.requirements:
            if r.op == "In":
                found: set[int] = set()
                for v in r.values:
                    found |= self._by_kv.get((r.key, v), set())
            elif r.op == "Exists":
                found = set(self._by_key.get(r.key, ()))
            else:
                rest.append(r)
                continue
            candidates = found if candidates is None else candidates & found
            if not candidates:
                return frozenset()
        pool: Iterable[int] = self.labels if candidates is None else candidates
        if not rest:
            return frozenset(pool)
        return frozenset(i for i in pool if all(r.matches(self.labels[i]) for r in rest))
