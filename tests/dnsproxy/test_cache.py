"""The FQDN cache (dnsproxy/cache.py): TTLs, limits, expiry that spares live
connections, and a restart."""

from __future__ import annotations

import json
from ipaddress import ip_address

import pytest

from dnsproxy.cache import FQDNCache
from policy.dns_names import NameSelector, check_match_pattern

A, B, C = ip_address("192.0.2.1"), ip_address("192.0.2.2"), ip_address("2001:db8::3")


def test_learned_addresses_hold_for_their_ttl_and_then_leave():
    c = FQDNCache()
    assert c.learn(1, ["Allowed.Test"], [(A, 30), (C, 60)], now=1000) == {A, C}
    assert c.addresses(lambda n: n == "allowed.test.") == {A, C}
    assert c.expire(now=1029) == set()
    assert c.expire(now=1030) == {A}
    assert c.addresses() == {C}
    assert c.expire(now=1060) == {C} and len(c) == 0


def test_a_live_connection_keeps_an_expired_address():
    c = FQDNCache()
    c.learn(1, ["allowed.test"], [(A, 5)], now=0)
    in_use = {(1, A)}
    assert c.expire(now=100, in_use=lambda e, a: (e, a) in in_use) == set()
    (entry,) = c.entries(now=100)
    assert entry.expired and entry.address == A
    in_use.clear()
    assert c.expire(now=101, in_use=lambda e, a: (e, a) in in_use) == {A}


def test_min_ttl_raises_short_ttls():
    c = FQDNCache(min_ttl=3600)
    c.learn(1, ["a.test"], [(A, 0)], now=0)
    assert c.expire(now=3599) == set() and c.expire(now=3600) == {A}


def test_a_renewed_answer_extends_and_never_shortens():
    c = FQDNCache()
    c.learn(1, ["a.test"], [(A, 100)], now=0)
    assert c.learn(1, ["a.test"], [(A, 10)], now=50) == set()  # known: nothing new to admit
    assert c.expire(now=99) == set() and c.expire(now=100) == {A}


def test_the_per_name_limit_drops_the_addresses_closest_to_expiry():
    c = FQDNCache(max_per_name=2)
    c.learn(1, ["a.test"], [(A, 10), (B, 100)], now=0)
    assert c.learn(1, ["a.test"], [(C, 50)], now=0) == {C}
    assert c.addresses() == {B, C}
    # A flood of short-lived addresses cannot push out the long-lived ones.
    flood = [(ip_address("198.18.0.0") + i, 1) for i in range(100)]
    assert c.learn(1, ["a.test"], flood, now=0) == set()
    assert c.addresses() == {B, C}


def test_an_address_held_by_another_endpoint_or_name_does_not_leave():
    c = FQDNCache()
    c.learn(1, ["a.test", "edge.cdn.test"], [(A, 10)], now=0)
    c.learn(2, ["a.test"], [(A, 100)], now=0)
    assert c.expire(now=50) == set()  # endpoint 2 still holds it
    assert c.addresses(endpoint_id=1) == set() and c.addresses(endpoint_id=2) == {A}
    assert c.forget_endpoint(2) == {A}


def test_selectors_pick_their_names_addresses():
    c = FQDNCache()
    c.learn(1, ["api.example.com"], [(A, 60)], now=0)
    c.learn(1, ["www.other.com"], [(B, 60)], now=0)
    sel = NameSelector(match_pattern=check_match_pattern("*.example.com"))
    assert c.addresses(sel.matches) == {A}


def test_the_cache_survives_a_restart_through_json():
    c = FQDNCache()
    c.learn(1, ["a.test"], [(A, 60), (C, 120)], now=1000)
    doc = json.loads(json.dumps(c.to_json()))
    back = FQDNCache.from_json(doc)
    assert list(back.entries(now=1000)) == list(c.entries(now=1000))
    assert back.expire(now=1060) == {A}


@pytest.mark.parametrize("doc, why", [
    ({}, "version-1"),
    ({"version": 1, "entries": [{"endpoint": "x", "name": "a", "addresses": {}}]}, "entries\\[0\\]"),
    ({"version": 1, "entries": [{"endpoint": 1, "name": "a", "addresses": {"not-an-ip": 1}}]}, "entries\\[0\\]"),
    ({"version": 1, "entries": [{"endpoint": 1, "name": "a"}]}, "entries\\[0\\]"),
])
def test_a_damaged_cache_file_is_refused_with_the_entry_named(doc, why):
    with pytest.raises(ValueError, match=why):
        FQDNCache.from_json(doc)
