"""The one place where the IPv4-only datapath meets a compiled state that
may hold IPv6.

The compiled state is family-generic (policy/families.py): IPv6 CIDR
prefixes get identities, ipcache entries and policy entries like IPv4 ones.
The kernel is not, yet: its ipcache key is a 32-bit address
(bpf/lib/layout.h), and its programs drop every IPv6 packet (bpf/lib/
common.h passes only ETH_P_IP and ARP), so IPv6 fails closed until the IPv6
maps and programs exist. `kernel_state` is what the kernel writer
(reconcile.apply_state) is given instead of the compiled state:

- the ipcache keeps its IPv4 prefixes only: an IPv6 prefix has no key to
  go into (packing it into the IPv4 key would write garbage or raise);
- each endpoint keeps the policy entries whose peer identity an IPv4
  address can carry. An identity the ipcache holds only IPv6 prefixes of
  (an IPv6 CIDR identity; world-ipv6 on a dual-stack node; the label
  identity of IPv6-only pods, whose /128s are its only prefixes) never matches
  an IPv4 packet, so its entries change no verdict; written, they would
  only take room in the endpoint's policy map, and a policy with many IPv6
  prefixes could overflow it and leave the endpoint on its old policy.
  An identity with no prefix at all (a label identity of another node,
  init, health) is kept: the IPv4 datapath may learn it from elsewhere.

When the IPv6 datapath lands, this module goes and the writer takes the
state whole. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from policy.compiled import CompiledState, EndpointPolicy
from policy.families import IPNetwork


def ipv6_only_identities(ipcache: Mapping[IPNetwork, int]) -> frozenset[int]:
    """Identities that appear in the ipcache only with IPv6 prefixes."""
    families: dict[int, set[int]] = {}
    for net, ident in ipcache.items():
        families.setdefault(ident, set()).add(net.version)
    return frozenset(ident for ident, versions in families.items() if versions == {6})


def kernel_state(state: CompiledState) -> CompiledState:
    """`state` as the IPv4-only datapath can hold it (see the module's
    docstring); `state` itself when it names no IPv6 prefix."""
    if all(net.version == 4 for net in state.ipcache):
        return state
    drop = ipv6_only_identities(state.ipcache)
    ipcache = {net: ident for net, ident in state.ipcache.items() if net.version == 4}
    endpoints = {i: _without(ep, drop) for i, ep in state.endpoints.items()}
    return replace(state, ipcache=ipcache, endpoints=endpoints)


def _without(ep: EndpointPolicy, drop: frozenset[int]) -> EndpointPolicy:
    kept = tuple(e for e in ep.entries if e.key.identity not in drop)
    return ep if len(kept) == len(ep.entries) else replace(ep, entries=kept)
