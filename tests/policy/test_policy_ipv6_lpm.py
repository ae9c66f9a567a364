"""IPv6 prefixes in the ipcache and the compiled state: longest-prefix match
exactly as for IPv4, one table for both families with no prefix ever
matching an address of the other family (the kernel keeps one trie per
family), `except` carving, and a peer naming both families."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policytest_helpers import policies

from policy.compiled import Direction, Protocol, lookup
from policy.compiler import Compiler, compile_state
from policy.endpoint import Endpoint
from policy.families import Stack
from policy.identity import (
    FIRST_CIDR_IDENTITY,
    IDENTITY_WORLD,
    IDENTITY_WORLD_IPV4,
    IDENTITY_WORLD_IPV6,
    IdentityAllocator,
)
from policy.ipcache import PrefixMap

WEB = Endpoint(1, {"app": "web"}, IPv4Address("10.0.0.1"))


def cnp(name: str, egress: str) -> str:
    body = "\n".join("  " + line for line in egress.strip("\n").splitlines())
    return (f"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n"
            f"  endpointSelector: {{matchLabels: {{app: web}}}}\n  egress:\n{body}\n---\n")


# ---------------------------------------------------------------- PrefixMap


def test_families_never_match_each_other():
    """10.0.0.0/8 and ::a00:0/104 have the same network address as an
    integer and 0.0.0.0/8 and ::/8 the same key too: each still answers its
    own family only."""
    m = PrefixMap({
        IPv4Network("0.0.0.0/0"): 2, IPv6Network("::/0"): 10,
        IPv4Network("10.0.0.0/8"): 100, IPv6Network("::a00:0/104"): 101,
        IPv4Network("0.0.0.0/8"): 102, IPv6Network("::/8"): 103,
    })
    assert m.lookup(IPv4Address("10.1.2.3")) == 100
    assert m.lookup(IPv6Address("::a01:203")) == 101
    assert m.lookup(IPv4Address("0.0.0.1")) == 102
    assert m.lookup(IPv6Address("::1")) == 103
    assert m.lookup(IPv4Address("11.0.0.1")) == 2
    assert m.lookup(IPv6Address("2001:db8::1")) == 10
    assert m.covering(IPv6Network("::a00:0/112")) == [IPv6Network("::/0"), IPv6Network("::/8"), IPv6Network("::a00:0/104")]
    assert m.covering(IPv4Network("10.0.0.0/16")) == [IPv4Network("0.0.0.0/0"), IPv4Network("10.0.0.0/8")]
    assert m.inside(IPv6Network("::/0")) == [IPv6Network("::/8"), IPv6Network("::a00:0/104")]
    assert m.inside(IPv4Network("0.0.0.0/0")) == [IPv4Network("0.0.0.0/8"), IPv4Network("10.0.0.0/8")]


def test_an_address_no_prefix_covers_is_world_as_the_kernel_answers():
    m = PrefixMap({IPv4Network("0.0.0.0/0"): 2, IPv6Network("2001:db8::/32"): 100})
    assert m.lookup(IPv6Address("2001:db9::1")) == IDENTITY_WORLD


def test_address_space_of_an_ipv6_identity_carves_out_more_specific_prefixes():
    m = PrefixMap({IPv6Network("::/0"): 10, IPv6Network("2001:db8::/32"): 100, IPv6Network("2001:db8:bad::/48"): 101,
                   IPv4Network("0.0.0.0/0"): 9})
    assert m.address_space(100) == [(IPv6Network("2001:db8::/32"), [IPv6Network("2001:db8:bad::/48")])]
    assert m.address_space(10) == [(IPv6Network("::/0"), [IPv6Network("2001:db8::/32"), IPv6Network("2001:db8:bad::/48")])]
    assert m.address_space(9) == [(IPv4Network("0.0.0.0/0"), [])]


def _prefix(version: int) -> st.SearchStrategy:
    cls = IPv4Network if version == 4 else IPv6Network
    bits = cls(0).max_prefixlen
    return st.tuples(st.integers(0, 2**bits - 1), st.integers(0, bits)).map(
        lambda t: cls((t[0] >> (bits - t[1]) << (bits - t[1]), t[1])))


_ANY_PREFIX = st.one_of(_prefix(4), _prefix(6))


@settings(max_examples=200, deadline=None)
@given(st.lists(_ANY_PREFIX, max_size=12, unique=True), st.lists(_ANY_PREFIX, min_size=1, max_size=6))
def test_lookup_is_the_longest_prefix_of_the_address_family(nets, probes):
    """The oracle is the definition: of the prefixes containing the address
    (ipaddress's own containment, which is per family), the longest."""
    table = {n: 1000 + i for i, n in enumerate(nets)}
    m = PrefixMap(table)
    for p in probes:
        for addr in (p.network_address, p.broadcast_address):
            containing = [n for n in nets if n.version == addr.version and addr in n]
            want = table[max(containing, key=lambda n: n.prefixlen)] if containing else IDENTITY_WORLD
            assert m.lookup(addr) == want
        assert m.covering(p) == sorted((n for n in nets if n.version == p.version and p.subnet_of(n)), key=lambda n: n.prefixlen)
        assert sorted(m.inside(p)) == sorted(n for n in nets if n.version == p.version and n != p and n.subnet_of(p))


# ---------------------------------------------------------------- compiled state


def _allowed(state, addr: str, port: int = 443) -> bool:
    ep = state.endpoints[1]
    return lookup(ep, state.identity_of(ip_address(addr)), Direction.EGRESS, Protocol.TCP, port).allowed


@pytest.mark.parametrize("stack", [Stack.IPV4, Stack.DUAL])
def test_ipv6_prefixes_get_cidr_identities_in_every_stack(stack):
    """The compiled state holds IPv6 prefixes whatever the node runs (the
    node's stack decides only the world prefixes)."""
    st_ = compile_state(policies(cnp("a", "- toCIDR: ['2001:db8::/32', 10.10.0.0/16]")), [WEB], stack=stack)
    v6, v4 = st_.ipcache[IPv6Network("2001:db8::/32")], st_.ipcache[IPv4Network("10.10.0.0/16")]
    assert v6 >= FIRST_CIDR_IDENTITY and v4 >= FIRST_CIDR_IDENTITY and v6 != v4
    assert {e.key.identity for e in st_.endpoints[1].entries} == {v6, v4}


def test_except_carves_ipv6_as_it_does_ipv4():
    """Cilium's toCIDRSet (and Kubernetes' ipBlock): the except prefixes are
    not allowed, the rest of the cidr is, and a more specific prefix another
    policy names keeps the enclosing allow only outside the except."""
    text = (cnp("a", "- toCIDRSet: [{cidr: '2001:db8::/32', except: ['2001:db8:bad::/48']}]")
            + cnp("b", "- toCIDR: ['2001:db8:bad:1::/64', '2001:db8:1::/64']\n  toPorts: [{ports: [{port: '22', protocol: TCP}]}]"))
    st_ = compile_state(policies(text), [WEB], stack=Stack.DUAL)
    assert _allowed(st_, "2001:db8::1")
    assert _allowed(st_, "2001:db8:1::1")  # its own /64 identity still carries the /32 allow
    assert not _allowed(st_, "2001:db8:bad::1")
    assert not _allowed(st_, "2001:db8:bad:1::1")  # inside the except: only policy b's port 22
    assert _allowed(st_, "2001:db8:bad:1::1", port=22)
    assert not _allowed(st_, "2001:db9::1")
    labels = st_.identity_labels[st_.ipcache[IPv6Network("2001:db8:bad:1::/64")]]
    assert labels == {"cidr:2001:db8::/32", "cidr:2001:db8:bad::/48", "cidr:2001:db8:bad:1::/64", "reserved:world-ipv6"}


def test_ipv4_excepts_keep_their_meaning_beside_ipv6_ones():
    text = cnp("a", "- toCIDRSet:\n  - {cidr: 10.0.0.0/8, except: [10.96.0.0/12]}\n  - {cidr: 'fd00::/8', except: ['fd00:96::/32']}")
    st_ = compile_state(policies(text), [WEB], stack=Stack.DUAL)
    assert _allowed(st_, "10.1.0.1") and not _allowed(st_, "10.96.0.1")
    assert _allowed(st_, "fd00:1::1") and not _allowed(st_, "fd00:96::1")
    assert not _allowed(st_, "11.0.0.1") and not _allowed(st_, "fe80::1")


def test_incremental_compile_answers_as_a_fresh_one():
    a = cnp("a", "- toCIDRSet: [{cidr: '2001:db8::/32', except: ['2001:db8:bad::/48']}]")
    b = cnp("b", "- toCIDR: ['2001:db8:bad::/48', 10.0.0.0/8]\n  toPorts: [{ports: [{port: '22', protocol: TCP}]}]")
    c = cnp("c", "- toEntities: [world-ipv6]\n  toPorts: [{ports: [{port: '80', protocol: TCP}]}]")
    probes = [(a_, p) for a_ in ("2001:db8::1", "2001:db8:bad::1", "2001:db9::1", "10.0.0.5", "8.8.8.8") for p in (22, 80, 443)]
    comp = Compiler(stack=Stack.DUAL)
    comp.upsert_endpoint(WEB)
    for step in ([a], [a, b], [a, b, c], [b, c], [c], [a, c]):
        comp_policies = policies("".join(step))
        for key in [k for k in comp.policies if k not in {p.key for p in comp_policies}]:
            comp.delete_policy(key)
        for p in comp_policies:
            comp.upsert_policy(p)
        inc = comp.compile()
        fresh = compile_state(comp_policies, [WEB], stack=Stack.DUAL)
        assert [_allowed(inc, x, p) for x, p in probes] == [_allowed(fresh, x, p) for x, p in probes], step
        assert {str(n) for n in inc.ipcache} == {str(n) for n in fresh.ipcache}


def test_cidr_identities_of_both_families_survive_a_restart():
    ids = IdentityAllocator()
    v6, v4 = ids.for_cidr(IPv6Network("2001:db8::/32")), ids.for_cidr(IPv4Network("10.0.0.0/8"))
    back = IdentityAllocator.from_json(ids.to_json())
    assert back.for_cidr(IPv6Network("2001:db8::/32")) == v6 and back.for_cidr(IPv4Network("10.0.0.0/8")) == v4


def test_default_routes_are_the_world_identities_of_the_stack():
    """Cilium's ipcache set-up: single-stack puts `world` on its family's
    default route, dual-stack world-ipv4 on 0.0.0.0/0 and world-ipv6 on ::/0;
    a family the node does not run has none."""
    def routes(stack: Stack) -> dict:
        return {str(n): i for n, i in compile_state([], [WEB], stack=stack).ipcache.items() if n.prefixlen == 0}

    assert routes(Stack.IPV4) == {"0.0.0.0/0": IDENTITY_WORLD}
    assert routes(Stack.IPV6) == {"::/0": IDENTITY_WORLD}
    assert routes(Stack.DUAL) == {"0.0.0.0/0": IDENTITY_WORLD_IPV4, "::/0": IDENTITY_WORLD_IPV6}
