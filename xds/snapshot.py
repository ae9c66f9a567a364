"""An immutable, self-checking set of resources for one Envoy node. No I/O.

A Snapshot is checked when it is built, never when it is sent: names are
unique per type and every reference resolves (a listener's route
configuration exists, a route configuration's clusters exist), so a broken
snapshot is refused before Envoy could half-apply it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterable, Mapping

from .errors import SnapshotError
from .resources import ADS_ORDER, Resource, short


def content_version(resources: Iterable[Resource]) -> str:
    """A version string that changes iff some resource's content changes."""
    h = hashlib.blake2b(digest_size=8)
    for r in sorted(resources, key=lambda r: (r.type_url, r.name)):
        h.update(f"{r.type_url}\0{r.name}\0{r.version}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Snapshot:
    version: str
    # type_url -> name -> Resource
    resources: Mapping[str, Mapping[str, Resource]]

    @classmethod
    def build(cls, resources: Iterable[Resource], version: str | None = None) -> "Snapshot":
        by_type: dict[str, dict[str, Resource]] = {t: {} for t in ADS_ORDER}
        items = list(resources)
        for r in items:
            bucket = by_type[r.type_url]
            if r.name in bucket:
                raise SnapshotError(f"duplicate {short(r.type_url)} resource {r.name!r}")
            bucket[r.name] = r
        for r in items:
            for ref_type, ref_name in r.refs:
                if ref_name not in by_type.get(ref_type, {}):
                    raise SnapshotError(
                        f"{short(r.type_url)} {r.name!r} refers to missing {short(ref_type)} {ref_name!r}"
                    )
        frozen = MappingProxyType({t: MappingProxyType(v) for t, v in by_type.items()})
        return cls(version=version or content_version(items), resources=frozen)

    def of(self, type_url: str) -> Mapping[str, Resource]:
        return self.resources.get(type_url, MappingProxyType({}))

    def names(self, type_url: str) -> frozenset[str]:
        return frozenset(self.of(type_url))

    def __len__(self) -> int:
        return sum(len(v) for v in self.resources.values())


EMPTY = Snapshot.build([], version="empty")
