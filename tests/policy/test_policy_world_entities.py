"""`world`, `world-ipv4` and `world-ipv6` per stack, with Cilium as the
oracle (policy/api/entity.go's EntitySelectorMapping, labels/cidr.go, the
agent's ipcache set-up, PR 29958 "expand world to select all address
families"):

- dual-stack: 0.0.0.0/0 is world-ipv4 (9), ::/0 world-ipv6 (10); `world`
  selects 2, 9, 10 and every CIDR identity; `world-ipvN` its family's;
- single-stack: the family's default route is `world` (2); `world` selects 2
  and every CIDR identity.

And our one documented difference (policy/families.py): on a single-stack
node `world-ipvN` is that family's part of `world`, not nothing, so world
traffic over IPv4 is matched by `world` and by `world-ipv4` on an
IPv4-only node, and a deny of `world-ipv4` denies it.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_address

import pytest
from policytest_helpers import policies

from policy.compiled import Direction, Protocol, Verdict, lookup
from policy.compiler import Compiler, compile_state
from policy.endpoint import Endpoint
from policy.families import Stack
from policy.identity import CLUSTER_RESERVED, IDENTITY_WORLD, IDENTITY_WORLD_IPV4, IDENTITY_WORLD_IPV6
from policy.trace import Party, trace

WEB = Endpoint(1, {"app": "web"}, IPv4Address("10.0.0.1"))
V4, V6 = IPv4Network("20.0.0.0/8"), IPv6Network("2001:db8::/32")
PREFIXES = "- toCIDR: [20.0.0.0/8, '2001:db8::/32']\n  toPorts: [{ports: [{port: '1', protocol: UDP}]}]\n"


def cnp(name: str, egress: str, section: str = "egress") -> str:
    body = "\n".join("  " + line for line in egress.strip("\n").splitlines())
    return (f"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n"
            f"  endpointSelector: {{matchLabels: {{app: web}}}}\n  {section}:\n{body}\n---\n")


def selected(peer_yaml: str, stack: Stack) -> set:
    """The peers an egress allow of `peer_yaml` (on TCP/80) selects, named:
    reserved numbers as they are, CIDR identities by their prefix."""
    text = cnp("p", PREFIXES) + cnp("q", f"- {peer_yaml}\n  toPorts: [{{ports: [{{port: '80', protocol: TCP}}]}}]\n")
    st_ = compile_state(policies(text), [WEB], stack=stack)
    by_ident = {i: str(n) for n, i in st_.ipcache.items() if n.prefixlen}
    return {by_ident.get(e.key.identity, e.key.identity) for e in st_.endpoints[1].entries if e.key.ports.lo == 80}


@pytest.mark.parametrize(
    "peer,stack,expected",
    [
        # Cilium, dual-stack.
        pytest.param("toEntities: [world]", Stack.DUAL, {2, 9, 10, str(V4), str(V6)}, id="dual-world"),
        pytest.param("toEntities: [world-ipv4]", Stack.DUAL, {9, str(V4)}, id="dual-world-ipv4"),
        pytest.param("toEntities: [world-ipv6]", Stack.DUAL, {10, str(V6)}, id="dual-world-ipv6"),
        pytest.param("toCIDR: [0.0.0.0/0]", Stack.DUAL, {9, str(V4)}, id="dual-cidr-zero-v4"),
        pytest.param("toCIDR: ['::/0']", Stack.DUAL, {10, str(V6)}, id="dual-cidr-zero-v6"),
        # Cilium, single-stack.
        pytest.param("toEntities: [world]", Stack.IPV4, {2, str(V4), str(V6)}, id="v4-world"),
        pytest.param("toCIDR: [0.0.0.0/0]", Stack.IPV4, {2, str(V4)}, id="v4-cidr-zero"),
        pytest.param("toEntities: [world]", Stack.IPV6, {2, str(V4), str(V6)}, id="v6-world"),
        pytest.param("toCIDR: ['::/0']", Stack.IPV6, {2, str(V6)}, id="v6-cidr-zero"),
        # Ours, single-stack: the family's part of world (Cilium selects nothing carrying traffic).
        pytest.param("toEntities: [world-ipv4]", Stack.IPV4, {2, str(V4)}, id="v4-world-ipv4-is-the-ipv4-world"),
        pytest.param("toEntities: [world-ipv6]", Stack.IPV4, {str(V6)}, id="v4-world-ipv6-never-opens-ipv4"),
        pytest.param("toCIDR: ['::/0']", Stack.IPV4, {str(V6)}, id="v4-ipv6-default-route-never-opens-ipv4"),
        pytest.param("toEntities: [world-ipv6]", Stack.IPV6, {2, str(V6)}, id="v6-world-ipv6-is-the-ipv6-world"),
        pytest.param("toEntities: [world-ipv4]", Stack.IPV6, {str(V4)}, id="v6-world-ipv4-never-opens-ipv6"),
    ],
)
def test_world_selection(peer, stack, expected):
    assert selected(peer, stack) == expected


def test_cluster_holds_no_world_identity():
    assert not {IDENTITY_WORLD, IDENTITY_WORLD_IPV4, IDENTITY_WORLD_IPV6} & CLUSTER_RESERVED
    assert not {2, 9, 10} & selected("toEntities: [cluster]", Stack.DUAL)


@pytest.mark.parametrize("stack,label4,label6", [
    (Stack.IPV4, "reserved:world", "reserved:world"),
    (Stack.DUAL, "reserved:world-ipv4", "reserved:world-ipv6"),
])
def test_cidr_identities_carry_the_world_label_of_the_stack(stack, label4, label6):
    st_ = compile_state(policies(cnp("p", PREFIXES)), [WEB], stack=stack)
    assert st_.identity_labels[st_.ipcache[V4]] == {"cidr:20.0.0.0/8", label4}
    assert st_.identity_labels[st_.ipcache[V6]] == {"cidr:2001:db8::/32", label6}
    assert st_.identity_labels[IDENTITY_WORLD_IPV4] == {"reserved:world-ipv4"}
    assert st_.identity_labels[IDENTITY_WORLD_IPV6] == {"reserved:world-ipv6"}


def _verdict(text: str, dst: str, stack: Stack) -> str:
    st_ = compile_state(policies(text), [WEB], stack=stack)
    return trace(st_, Party.endpoint(1), Party.address(dst), 443).verdict


@pytest.mark.parametrize("stack", [Stack.IPV4, Stack.DUAL])
@pytest.mark.parametrize("entity,v4,v6", [
    ("world", "allowed", "allowed"),
    ("world-ipv4", "allowed", "denied"),
    ("world-ipv6", "denied", "allowed"),
])
def test_world_traffic_of_each_family_by_entity(stack, entity, v4, v6):
    text = cnp("p", f"- toEntities: [{entity}]")
    assert _verdict(text, "8.8.8.8", stack) == v4
    assert _verdict(text, "20.1.1.1", stack) == v4  # an IPv4 CIDR identity is IPv4 world too
    if stack.runs(6):
        assert _verdict(text, "2001:4860::8888", stack) == v6
    else:
        assert _verdict(text, "2001:4860::8888", stack) == "denied"  # the node drops IPv6 before any policy


@pytest.mark.parametrize("stack", [Stack.IPV4, Stack.DUAL])
def test_a_deny_of_world_ipv4_denies_ipv4_world_traffic(stack):
    """Fail safe on a single-stack node too (Cilium's single-stack world-ipv4
    selector selects nothing, so there the deny would deny nothing)."""
    text = cnp("p", "- toEntities: [all]") + cnp("d", "- toEntities: [world-ipv4]", section="egressDeny")
    assert _verdict(text, "8.8.8.8", stack) == "denied"
    assert _verdict(text, "10.0.0.1", stack) == "allowed"  # itself: an endpoint, not world


def test_existing_ipv4_world_policy_compiles_to_the_same_entries_as_before():
    """On the IPv4-only stack `world` is what it always was: identity 2 and
    the CIDR identities, one entry each, no world-ipv4/-ipv6 entries."""
    st_ = compile_state(policies(cnp("p", "- toEntities: [world]") + cnp("c", "- toCIDR: [20.0.0.0/8]")), [WEB])
    assert st_.stack is Stack.IPV4
    assert sorted(e.key.identity for e in st_.endpoints[1].entries) == [IDENTITY_WORLD, st_.ipcache[V4]]
    assert {str(n): i for n, i in st_.ipcache.items() if n.prefixlen == 0} == {"0.0.0.0/0": IDENTITY_WORLD}


@pytest.mark.parametrize("stack", [Stack.IPV4, Stack.DUAL])
def test_a_prefix_added_later_joins_the_selectors_of_its_family_only(stack):
    """The selector cache's incremental path: an IPv6 CIDR identity that
    appears after the selectors does not land in world-ipv4 or 0.0.0.0/0."""
    comp = Compiler(stack=stack)
    comp.upsert_endpoint(WEB)
    for name, peer in (("a", "toEntities: [world-ipv4]"), ("b", "toEntities: [world-ipv6]"), ("c", "toCIDR: [0.0.0.0/0]")):
        for p in policies(cnp(name, f"- {peer}\n  toPorts: [{{ports: [{{port: '{ord(name)}', protocol: TCP}}]}}]")):
            comp.upsert_policy(p)
    comp.compile()
    for p in policies(cnp("p", PREFIXES)):
        comp.upsert_policy(p)
    st_ = comp.compile()
    ep = st_.endpoints[1]

    def ports_for(addr: str) -> set[int]:
        ident = st_.identity_of(ip_address(addr))
        return {port for port in (97, 98, 99)
                if lookup(ep, ident, Direction.EGRESS, Protocol.TCP, port).verdict == Verdict.ALLOW}

    assert ports_for("20.0.0.1") == {97, 99}
    assert ports_for("2001:db8::1") == {98}
