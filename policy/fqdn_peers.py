"""Which addresses a toFQDNs selector admits, from what the node's pods
resolved (issue 22). Pure.

A selector admits the addresses its names resolved to, each as a host
prefix (/32 or /128), with one exception that no resolver can lift: an
address the cluster already knows as a pod, a node or the host is never
admitted through a name (Cilium: such an address keeps its own identity,
which carries no fqdn label, so a toFQDNs rule does not select it). A
resolver answering `allowed.test` with another pod's address therefore
opens nothing. Those addresses are reported, for the monitor and status.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

from policy.dns_names import NameSelector

Address = IPv4Address | IPv6Address
Prefix = IPv4Network | IPv6Network


@dataclass(frozen=True, slots=True)
class FQDNPeers:
    admitted: Mapping[NameSelector, frozenset[Prefix]]
    refused: Mapping[Address, frozenset[str]]  # address -> the names that tried to bring it in


def host_prefix(addr: Address) -> Prefix:
    return ip_network(addr)  # /32 or /128


def fqdn_peers(
    selectors: Iterable[NameSelector],
    resolved: Mapping[str, Iterable[Address]],
    in_cluster: Callable[[Address], bool],
) -> FQDNPeers:
    """`resolved`: canonical name -> addresses it resolved to (any endpoint's);
    `in_cluster`: whether an address is a pod's, a node's or the host's."""
    admitted: dict[NameSelector, set[Prefix]] = {}
    refused: dict[Address, set[str]] = {}
    for sel in dict.fromkeys(selectors):
        out = admitted.setdefault(sel, set())
        for name, addrs in resolved.items():
            if not sel.matches(name):
                continue
            for a in addrs:
                if in_cluster(a):
                    refused.setdefault(a, set()).add(name)
                else:
                    out.add(host_prefix(a))
    return FQDNPeers(
        {s: frozenset(p) for s, p in admitted.items()},
        {a: frozenset(n) for a, n in refused.items()},
    )
