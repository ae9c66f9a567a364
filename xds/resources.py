"""Type URLs, the ADS sending order and the encoded-resource value. No I/O.

A `Resource` is an Envoy resource already serialized (see serialize.py), its
content digest doubling as the per-resource version in delta xDS and as the
cache key that makes "re-send only when changed" a byte comparison.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"

# Make-before-break: clusters before the listeners that use them, routes after
# the listeners that name them (Envoy asks for route configs by name once it
# has seen the listener). EDS is not used: upstreams are ORIGINAL_DST.
ADS_ORDER: tuple[str, ...] = (CLUSTER, LISTENER, ROUTE)

# LDS and CDS are wildcard subscriptions; RDS is requested by name.
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})

SHORT_NAMES = {CLUSTER: "CDS", LISTENER: "LDS", ROUTE: "RDS"}


def short(type_url: str) -> str:
    return SHORT_NAMES.get(type_url, type_url.rsplit("/", 1)[-1])


@dataclass(frozen=True, slots=True)
class Resource:
    """One serialized Envoy resource and the names it depends on."""

    type_url: str
    name: str
    body: bytes  # the message bytes that go inside google.protobuf.Any.value
    # (type_url, name) of resources this one refers to: a listener's route
    # config, a route config's clusters. Checked by Snapshot.
    refs: frozenset[tuple[str, str]] = frozenset()
    version: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.type_url not in ADS_ORDER:
            raise ValueError(f"unknown type_url {self.type_url!r}")
        if not self.version:
            digest = hashlib.blake2b(self.body, digest_size=8).hexdigest()
            object.__setattr__(self, "version", digest)
