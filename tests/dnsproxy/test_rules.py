"""Egress DNS rules as the proxy applies them (dnsproxy/rules.py)."""

from __future__ import annotations

from dnsproxy.rules import DNSPortRule, decide
from policy.dns_names import NameSelector, check_match_name, check_match_pattern
from policy.identity import IDENTITY_ANY

KUBE_DNS, OTHER = 3001, 3002


def rule(peers, names, port=53, protocol="ANY", ref="default/dns"):
    sels = tuple(NameSelector(match_pattern=check_match_pattern(n)) if "*" in n else NameSelector(match_name=check_match_name(n)) for n in names)
    return DNSPortRule(frozenset(peers), port, protocol, sels, ref)


def test_rules_for_one_resolver_are_ored_and_anything_else_is_denied():
    rules = [rule([KUBE_DNS], ["allowed.test"], ref="a"), rule([KUBE_DNS], ["*.example.com"], ref="b")]
    assert decide(rules, KUBE_DNS, 53, "UDP", "Allowed.Test.").allowed
    v = decide(rules, KUBE_DNS, 53, "UDP", "api.example.com")
    assert v.allowed and v.rule == "b: matchPattern: *.example.com."
    v = decide(rules, KUBE_DNS, 53, "UDP", "other.test")
    assert not v.allowed and "matches the name" in v.rule


def test_a_rule_covers_only_its_resolvers_ports_and_protocols():
    rules = [rule([KUBE_DNS], ["*"], protocol="UDP")]
    assert decide(rules, KUBE_DNS, 53, "UDP", "anything.test").allowed
    for peer, port, proto in ((OTHER, 53, "UDP"), (KUBE_DNS, 5353, "UDP"), (KUBE_DNS, 53, "TCP")):
        v = decide(rules, peer, port, proto, "anything.test")
        assert not v.allowed and "covers" in v.rule


def test_match_all_pattern_and_any_peer():
    rules = [rule([IDENTITY_ANY], ["*"], port=0)]
    for name in ("a.test", ".", "_srv._tcp.example.com"):
        assert decide(rules, OTHER, 53, "TCP", name).allowed
