"""A Pod's addresses as its status says: `status.podIPs`, at most one per family.

The kubelet writes them from what the CNI plugin's result listed (ciliate-cni
lists the pod's IPv4 and IPv6 address), the first of the cluster's primary
family; `status.podIP` is the first of them and is all an older API server
or kubelet writes. Read as Cilium reads them: `podIPs` when present, else
`podIP`; an entry that is not an address is skipped; the first address of
each family counts. A `hostNetwork` Pod's addresses are the node's, not its
own, so it has none here. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any


@dataclass(frozen=True, slots=True)
class PodIPs:
    ipv4: IPv4Address | None = None
    ipv6: IPv6Address | None = None


def _entries(status: Mapping[str, Any]) -> list[object]:
    listed = status.get("podIPs")
    if isinstance(listed, list) and listed:
        return [e.get("ip") for e in listed if isinstance(e, Mapping)]
    return [status.get("podIP")]


def pod_ips(pod: Mapping[str, Any]) -> PodIPs:
    if (pod.get("spec") or {}).get("hostNetwork"):
        return PodIPs()
    found: dict[int, IPv4Address | IPv6Address] = {}
    for raw in _entries(pod.get("status") or {}):
        if not isinstance(raw, str):
            continue
        try:
            addr = ip_address(raw)
        except ValueError:
            continue
        found.setdefault(addr.version, addr)
    v4, v6 = found.get(4), found.get(6)
    return PodIPs(v4 if isinstance(v4, IPv4Address) else None, v6 if isinstance(v6, IPv6Address) else None)
