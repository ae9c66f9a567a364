"""Which addresses a toFQDNs selector admits (policy/fqdn_peers.py): what the
pods resolved, never a cluster address."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st

from policy.dns_names import NameSelector, check_match_name, check_match_pattern
from policy.fqdn_peers import fqdn_peers

POD, NODE = ip_address("10.0.1.5"), ip_address("10.0.0.1")
EXT, EXT6 = ip_address("192.0.2.10"), ip_address("2001:db8::10")
CLUSTER = {POD, NODE}


def name(n: str) -> NameSelector:
    return NameSelector(match_name=check_match_name(n))


def pattern(p: str) -> NameSelector:
    return NameSelector(match_pattern=check_match_pattern(p))


def test_a_selector_admits_host_prefixes_of_its_names_addresses():
    resolved = {"api.example.com.": [EXT, EXT6], "www.other.com.": [ip_address("198.51.100.1")]}
    got = fqdn_peers([name("API.example.com"), pattern("*.other.com")], resolved, CLUSTER.__contains__)
    assert got.admitted[name("api.example.com")] == {ip_network("192.0.2.10/32"), ip_network("2001:db8::10/128")}
    assert got.admitted[pattern("*.other.com")] == {ip_network("198.51.100.1/32")}
    assert not got.refused


def test_a_name_resolving_to_a_pod_or_the_node_opens_nothing():
    """A hostile resolver (or a pod answering itself) maps an allowed name
    to another pod's and the node's addresses."""
    resolved = {"allowed.test.": [POD, NODE, EXT]}
    got = fqdn_peers([name("allowed.test")], resolved, CLUSTER.__contains__)
    assert got.admitted[name("allowed.test")] == {ip_network("192.0.2.10/32")}
    assert got.refused == {POD: {"allowed.test."}, NODE: {"allowed.test."}}


def test_a_selector_with_nothing_resolved_admits_nothing():
    got = fqdn_peers([name("never.test")], {"allowed.test.": [EXT]}, CLUSTER.__contains__)
    assert got.admitted == {name("never.test"): frozenset()}


addresses = st.sampled_from([POD, NODE, EXT, EXT6, ip_address("203.0.113.7")])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["a.test.", "b.test.", "x.other."]), st.lists(addresses, max_size=4), max_size=3))
def test_no_cluster_address_is_ever_admitted(resolved):
    got = fqdn_peers([pattern("*.test"), pattern("*"), name("x.other")], resolved, CLUSTER.__contains__)
    for prefixes in got.admitted.values():
        assert not any(p.network_address in CLUSTER for p in prefixes)
    # Everything resolved is either admitted by some selector or refused.
    for n, addrs in resolved.items():
        for a in addrs:
            assert (a in got.refused) == (a in CLUSTER)
