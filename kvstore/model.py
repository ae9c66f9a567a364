"""The values the kvstore hands to the agent and takes from it: a node
(`NodeInfo`), an endpoint on another node (`RemoteEndpoint`) and the last
known picture of the rest of the cluster (`ClusterView`). Frozen; NodeInfo
and RemoteEndpoint are pydantic dataclasses, so their fields are validated
(a node name can never carry a "/" into a key) and they double as the JSON
shape stored in etcd (kvstore/layout.py). No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from types import MappingProxyType
from typing import Annotated

import immutables
from pydantic import Field
from pydantic.dataclasses import dataclass as validated_dataclass

# Kubernetes node names are DNS subdomains; allow upper case and "_" too
# (hostnames), never "/" (it separates key segments).
NodeName = Annotated[str, Field(pattern=r"^[A-Za-z0-9]([-A-Za-z0-9._]{0,251}[A-Za-z0-9])?$")]
Identity = Annotated[int, Field(ge=1, le=0xFFFFFFFF)]
# A named port as published: (IANA service name, IP protocol, port number).
NamedPortRecord = tuple[
    Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$")],
    Annotated[int, Field(ge=0, le=255)],
    Annotated[int, Field(ge=1, le=65535)],
]
# A label key or value as a node publishes it (the agent checks Kubernetes'
# syntax before publishing; here only what keeps a record sane).
LabelText = Annotated[str, Field(max_length=317)]


@validated_dataclass(frozen=True)
class NodeInfo:
    """One node: its name, the address other nodes reach it on, its pod CIDR,
    and for IPv6 pods their CIDR and, optionally, the node's IPv6 address
    (without one, the IPv6 route to its pods goes via its IPv4 address).
    Records of nodes without IPv6, and of older versions, have neither."""

    name: NodeName
    ip: IPv4Address
    pod_cidr: IPv4Network
    pod_cidr6: IPv6Network | None = None
    ip6: IPv6Address | None = None
    # The node's labels (fromNodes/toNodes and host policies select nodes
    # by them); None for nodes that publish none, and in older records.
    labels: dict[LabelText, LabelText] | None = field(default=None, hash=False)  # a dict: left out of the hash


@validated_dataclass(frozen=True)
class RemoteEndpoint:
    """An endpoint published by some node: one of its IPs, its numeric
    identity, its node (a dual-stack endpoint is two of these)."""

    ip: IPv4Address | IPv6Address
    identity: Identity
    node: NodeName
    # (name, IP protocol number, port) of each port the endpoint serves by
    # name (a Pod's container ports): other nodes resolve `port: http` in
    # egress rules towards it by them. Empty in older records.
    named_ports: tuple[NamedPortRecord, ...] = ()


def _frozen(m: Mapping) -> Mapping:
    # A persistent map is already immutable: the mirror hands out its own
    # (an O(1) snapshot) instead of a copy of 50,000 endpoints per event.
    if isinstance(m, immutables.Map):
        return m
    return MappingProxyType(dict(m))


@dataclass(frozen=True)
class ViewDelta:
    """How a view differs from the one the same mirror handed out before it
    (its `serial` is `base`): the endpoint addresses whose entry or whose
    identity's labels changed, and whether any node did. A consumer that
    holds the base patches those addresses instead of walking the cluster."""

    base: int
    endpoints: frozenset[IPv4Address | IPv6Address]
    nodes: bool


@dataclass(frozen=True)
class ClusterView:
    """The remote picture, as last seen in etcd (kept while etcd is down).

    nodes       every node but this one
    endpoints   endpoints published by the other nodes
    identities  every identity in etcd: id -> labels
    revision    the etcd revision this view reflects (0 before the first list)
    serial      this view's number among those its mirror handed out (0: none)
    delta       what changed since the mirror's previous view (None: unknown)
    """

    nodes: Mapping[str, NodeInfo] = field(default_factory=dict)
    endpoints: Mapping[IPv4Address | IPv6Address, RemoteEndpoint] = field(default_factory=dict)
    identities: Mapping[int, frozenset[str]] = field(default_factory=dict)
    revision: int = 0
    serial: int = 0
    delta: ViewDelta | None = None

    def __post_init__(self) -> None:
        for name in ("nodes", "endpoints", "identities"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))


EMPTY_VIEW = ClusterView()
