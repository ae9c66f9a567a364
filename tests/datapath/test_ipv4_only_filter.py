"""Pure: the IPv4-only kernel writer is never given IPv6 (redirect/ipv4_only.py).

A compiled state may hold IPv6 prefixes and entries for identities only
IPv6 prefixes have; the maps cannot hold them (the ipcache key is 32 bits)
and the datapath drops IPv6 anyway. The filter keeps every IPv4 verdict and
leaves the rest out; apply_state goes through it (checked here against
in-memory maps, so no kernel is touched)."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

from policy.compiled import (
    ALL_PORTS,
    CompiledState,
    Direction,
    EndpointPolicy,
    PolicyEntry,
    PolicyKey,
    Protocol,
    Verdict,
    lookup,
)
from policy.compiler import compile_state
from policy.endpoint import Endpoint
from policy.families import Stack
from policy.load import load_text
from redirect import policymap, reconcile
from redirect.ipv4_only import ipv6_only_identities, kernel_state
from redirect.maps import MapSizes

V4_CIDR, V6_CIDR, BOTH, NO_PREFIX = 1 << 24, (1 << 24) + 1, 300, 301


def _entry(ident: int, verdict: Verdict = Verdict.ALLOW) -> PolicyEntry:
    return PolicyEntry(PolicyKey(ident, Direction.EGRESS, Protocol.ANY, ALL_PORTS), verdict)


def _state() -> CompiledState:
    ep = EndpointPolicy(1, 256, IPv4Address("10.0.0.1"), False, True,
                        tuple(sorted((_entry(i) for i in (2, 10, V4_CIDR, V6_CIDR, BOTH, NO_PREFIX)), key=lambda e: e.key)))
    ipcache = {
        IPv4Network("0.0.0.0/0"): 9, IPv6Network("::/0"): 10,
        IPv4Network("10.0.0.1/32"): 256,
        IPv4Network("20.0.0.0/8"): V4_CIDR, IPv6Network("2001:db8::/32"): V6_CIDR,
        IPv4Network("30.0.0.0/8"): BOTH, IPv6Network("fd00::/8"): BOTH,
    }
    return CompiledState(7, {1: ep}, ipcache, {}, Stack.DUAL)


def test_identities_only_ipv6_prefixes_carry():
    assert ipv6_only_identities(_state().ipcache) == {10, V6_CIDR}


def test_the_kernel_gets_ipv4_prefixes_and_the_entries_ipv4_can_reach():
    got = kernel_state(_state())
    assert all(n.version == 4 for n in got.ipcache)
    assert got.ipcache == {n: i for n, i in _state().ipcache.items() if n.version == 4}
    # world-ipv6 and the IPv6 CIDR identity go; an identity with prefixes of
    # both families, and one with none, stay.
    assert sorted(e.key.identity for e in got.endpoints[1].entries) == sorted([2, V4_CIDR, BOTH, NO_PREFIX])
    assert got.revision == 7 and got.stack is Stack.DUAL


def test_no_ipv4_verdict_changes():
    full, kernel = _state(), kernel_state(_state())

    def decision(state: CompiledState, addr: str) -> Any:
        return lookup(state.endpoints[1], state.identity_of(ip_address(addr)), Direction.EGRESS, Protocol.TCP, 80)

    for addr in ("10.0.0.1", "20.1.1.1", "30.1.1.1", "8.8.8.8"):
        assert decision(kernel, addr) == decision(full, addr)


def test_a_state_without_ipv6_passes_through_untouched():
    state = CompiledState(1, {}, {IPv4Network("0.0.0.0/0"): 2})
    assert kernel_state(state) is state


def test_a_dual_stack_pod_keeps_its_ipv4_entries_and_an_ipv6_only_pods_identity_goes():
    """The pod's /128 is left out; an identity that also has a /32 stays a
    peer the kernel can see, one only IPv6 pods carry does not."""
    pods = [Endpoint(1, {"app": "client"}, IPv4Address("10.200.0.1")),
            Endpoint(2, {"app": "web"}, IPv4Address("10.200.0.2"), IPv6Address("fd00:200::2")),
            Endpoint(3, {"app": "v6"}, None, IPv6Address("fd00:200::3"))]
    text = ("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n"
            "  endpointSelector: {matchLabels: {app: client}}\n"
            "  egress: [{toEndpoints: [{matchLabels: {app: web}}, {matchLabels: {app: v6}}]}]\n")
    state = compile_state(load_text(text, "t.yaml").policies, pods)
    web, v6 = state.endpoints[2].identity, state.endpoints[3].identity
    kernel = kernel_state(state)
    assert all(net.version == 4 for net in kernel.ipcache) and kernel.ipcache[IPv4Network("10.200.0.2/32")] == web
    assert {e.key.identity for e in kernel.endpoints[1].entries} & {web, v6} == {web}
    assert {e.key.identity for e in state.endpoints[1].entries} & {web, v6} == {web, v6}


def test_a_compiled_ipv4_only_node_with_ipv6_policy_writes_what_it_wrote_before():
    """The agent's case: Stack.IPV4, a policy naming both families. What the
    kernel gets equals the compile of the IPv4 half alone."""
    def compiled(cidrs: str) -> CompiledState:
        text = ("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n"
                "  endpointSelector: {matchLabels: {app: web}}\n  egress:\n"
                f"  - toCIDR: [{cidrs}]\n  - toEntities: [world]\n    toPorts: [{{ports: [{{port: '53', protocol: UDP}}]}}]\n")
        res = load_text(text, "p.yaml")
        assert not res.errors
        return compile_state(res.policies, [Endpoint(1, {"app": "web"}, IPv4Address("10.0.0.1"))])

    both, v4 = kernel_state(compiled("20.0.0.0/8, '2001:db8::/32', 'fd00::/8'")), compiled("20.0.0.0/8")
    assert both.ipcache == v4.ipcache
    assert [(e.key, e.verdict) for e in both.endpoints[1].entries] == [(e.key, e.verdict) for e in v4.endpoints[1].entries]


# ---------------------------------------------------------------- the writer goes through it


@dataclass
class _Maps:
    """apply_state's view of PinnedMaps, in memory."""

    sizes: MapSizes = field(default_factory=MapSizes)
    ipcache: dict = field(default_factory=dict)
    lxc: dict = field(default_factory=dict)
    policy: dict = field(default_factory=dict)

    def read_lxc(self) -> dict:
        return dict(self.lxc)

    def write_lxc(self, addr: Any, endpoint_id: int, identity: int, flags: int, only_new: bool = False) -> bool:
        self.lxc[addr] = (endpoint_id, identity, flags)
        return True

    def delete_lxc(self, addr: Any) -> None:
        self.lxc.pop(addr, None)

    def policy_fd(self, endpoint_id: int, create: bool = True) -> int:
        self.policy.setdefault(endpoint_id, {})
        return endpoint_id

    def read_policy(self, endpoint_id: int) -> dict:
        return {}

    def policy_endpoints(self) -> list[int]:
        return list(self.policy)

    def drop_policy_map(self, endpoint_id: int) -> None:
        self.policy.pop(endpoint_id, None)

    def read_ipcache(self) -> dict:
        return dict(self.ipcache)

    def write_ipcache(self, net: IPv4Network, identity: int) -> None:
        assert isinstance(net, IPv4Network), net
        self.ipcache[net] = identity

    def delete_ipcache(self, net: IPv4Network) -> None:
        self.ipcache.pop(net, None)


class _Sys:
    def __init__(self, maps: _Maps) -> None:
        self.maps = maps

    def update(self, fd: int, key: bytes, value: bytes) -> None:
        self.maps.policy[fd][key] = value

    def delete(self, fd: int, key: bytes) -> None:
        self.maps.policy[fd].pop(key, None)


def test_apply_state_writes_no_ipv6_prefix_and_no_ipv6_only_entry(monkeypatch):
    maps = _Maps()
    monkeypatch.setattr(reconcile, "bpfsys", _Sys(maps))
    res = reconcile.apply_state(maps, _state())  # type: ignore[arg-type]
    assert res.ok and res.applied == {1}
    assert maps.ipcache == {n: i for n, i in _state().ipcache.items() if n.version == 4}
    assert {policymap.decode_key(k).identity for k in maps.policy[1]} == {2, V4_CIDR, BOTH, NO_PREFIX}
    assert res.written == 4
