"""A dual-stack endpoint in the compiler: both its addresses carry its one
identity in the ipcache (the /32 and the /128), so a policy selecting it by
labels covers both without the author writing anything per family; its /128
outranks every CIDR prefix covering it, so a CIDR rule does not select a
local pod by its IPv6 address, exactly as Cilium treats the IPv4 one (its
policy-language docs: CIDR rules do not apply to traffic where both sides
are managed by Cilium; its ipcache holds each endpoint IP with the endpoint's
identity, and CIDR selectors select CIDR identities only). The node's IPv6 addresses are `host`."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

import pytest
from policytest_helpers import policies

from policy.compiled import Direction, Protocol, Verdict, lookup
from policy.compiler import Compiler, compile_state
from policy.endpoint import Endpoint
from policy.families import Stack
from policy.identity import IDENTITY_HOST

V4, V6 = IPv4Address("10.200.0.5"), IPv6Address("fd00:200::5")
WEB = Endpoint(1, {"app": "web"}, V4, V6)
CLIENT = Endpoint(2, {"app": "client"}, IPv4Address("10.200.0.6"), IPv6Address("fd00:200::6"))


def egress(name: str, rule: str) -> str:
    return (f"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n"
            f"  endpointSelector: {{matchLabels: {{app: client}}}}\n  egress:\n  - {rule}\n"
            f"    toPorts: [{{ports: [{{port: '80', protocol: TCP}}]}}]\n")


def allowed(state, src: int, addr: str) -> bool:
    """Egress from endpoint `src` to addr:80/TCP, as the kernel's lookup answers it."""
    return lookup(state.endpoints[src], state.identity_of(ip_address(addr)), Direction.EGRESS, Protocol.TCP, 80).verdict == Verdict.ALLOW


@pytest.mark.parametrize("stack", [Stack.IPV4, Stack.DUAL])
def test_both_addresses_of_a_dual_stack_endpoint_carry_its_identity(stack: Stack) -> None:
    state = compile_state([], [WEB], stack=stack)
    ident = state.endpoints[1].identity
    assert state.ipcache[IPv4Network(V4)] == ident and state.ipcache[IPv6Network(V6)] == ident
    assert (state.endpoints[1].ipv4, state.endpoints[1].ipv6) == (V4, V6)
    assert state.endpoint_by_ip(V6) is state.endpoint_by_ip(V4) is state.endpoints[1]


def test_an_ipv6_only_endpoint_is_in_the_ipcache_by_its_128() -> None:
    state = compile_state([], [Endpoint(3, {"app": "v6"}, None, IPv6Address("fd00:200::7"))], stack=Stack.DUAL)
    assert state.identity_of(IPv6Address("fd00:200::7")) == state.endpoints[3].identity
    assert state.endpoints[3].ipv4 is None


def test_one_label_rule_allows_both_addresses_of_the_peer() -> None:
    pol = policies(egress("to-web", "toEndpoints: [{matchLabels: {app: web}}]"))
    state = compile_state(pol, [WEB, CLIENT], stack=Stack.DUAL)
    assert allowed(state, 2, str(V4)) and allowed(state, 2, str(V6))
    assert not allowed(state, 2, "fd00:200::99")  # not the pod: world-ipv6


@pytest.mark.parametrize(
    "cidr, pod, other",
    [
        pytest.param("10.200.0.0/24", "10.200.0.5", "10.200.0.99", id="ipv4"),
        pytest.param("fd00:200::/64", "fd00:200::5", "fd00:200::99", id="ipv6"),
    ],
)
def test_a_cidr_rule_covering_a_pods_address_does_not_select_the_pod(cidr: str, pod: str, other: str) -> None:
    """The same answer for both families: the endpoint's host prefix is the
    longest match, so its identity (not the CIDR's) is the peer, and a CIDR
    rule opens only the addresses no endpoint holds."""
    pol = policies(egress("to-cidr", f"toCIDR: ['{cidr}']"))
    state = compile_state(pol, [WEB, CLIENT], stack=Stack.DUAL)
    cidr_ident = state.ipcache[ip_network(cidr)]
    assert state.identity_of(ip_address(pod)) == state.endpoints[1].identity != cidr_ident
    assert state.identity_of(ip_address(other)) == cidr_ident
    assert allowed(state, 2, other)
    assert not allowed(state, 2, pod)


def test_the_128_follows_the_endpoint_and_the_cidr_answers_again_once_it_goes() -> None:
    c = Compiler(stack=Stack.DUAL)
    for p in policies(egress("to-cidr", "toCIDR: ['fd00:200::/64']")):
        c.upsert_policy(p)
    c.upsert_endpoint(WEB)
    c.upsert_endpoint(CLIENT)
    state = c.compile()
    web = state.endpoints[1].identity
    cidr_ident = state.ipcache[IPv6Network("fd00:200::/64")]
    assert state.identity_of(V6) == web

    moved = Endpoint(1, {"app": "web"}, V4, IPv6Address("fd00:200::8"))
    c.upsert_endpoint(moved)
    state = c.compile()
    assert state.identity_of(IPv6Address("fd00:200::8")) == web
    assert IPv6Network(V6) not in state.ipcache and state.identity_of(V6) == cidr_ident
    assert state.endpoints[1].ipv6 == IPv6Address("fd00:200::8")

    c.upsert_endpoint(Endpoint(1, {"app": "web"}, V4, None))  # IPv6 dropped: IPv4 stays
    state = c.compile()
    assert state.identity_of(IPv6Address("fd00:200::8")) == cidr_ident and state.identity_of(V4) == web

    c.upsert_endpoint(moved)
    c.delete_endpoint(1)
    state = c.compile()
    assert not {IPv4Network(V4), IPv6Network("fd00:200::8")} & set(state.ipcache)


def test_the_nodes_ipv6_addresses_are_host() -> None:
    node6 = IPv6Address("2001:db8::10")
    state = compile_state([], [WEB], host_ips=[IPv4Address("192.168.1.10"), node6], stack=Stack.DUAL)
    assert state.ipcache[IPv6Network(node6)] == IDENTITY_HOST
    assert state.ipcache[IPv4Network("192.168.1.10/32")] == IDENTITY_HOST
    pol = policies(egress("to-host", "toEntities: [host]"))
    state = compile_state(pol, [WEB, CLIENT], host_ips=[node6], stack=Stack.DUAL)
    assert allowed(state, 2, str(node6))
