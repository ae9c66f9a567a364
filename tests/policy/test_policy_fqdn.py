"""toFQDNs and DNS rules in the compiler: a DNS rule sends the port's UDP and
TCP to the agent's one DNS proxy, with the names it admits per resolver; a
toFQDNs item selects the addresses the node's pods resolved for a matching
name (policy/fqdn_resolve.py), never a cluster address, and nothing before
any pod asked (fail closed)."""

from __future__ import annotations

from ipaddress import ip_address

from policy.compiled import DNS_PROXY_PORT, Direction, L7Kind, Protocol, Verdict, lookup
from policy.compiler import compile_state
from policy.endpoint import Endpoint
from policy.fqdn_resolve import resolve
from policy.load import load_text

EG = Direction.EGRESS

POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchName: Allowed.Test.}, {matchPattern: "*.cdn.test"}]
  - toFQDNs: [{matchName: allowed.test}, {matchPattern: "*.cdn.test"}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""

CLIENT = Endpoint(1, {"app": "client"}, ip_address("10.0.0.1"))
RESOLVER = Endpoint(2, {"app": "dns"}, ip_address("10.0.0.2"))
OTHER_POD = Endpoint(3, {"app": "other"}, ip_address("10.0.0.3"))


def compiled(names):
    [policy] = load_text(POLICY, "fqdn.yaml").policies
    res = resolve(policy, names, in_cluster=lambda a: a in {CLIENT.ipv4, RESOLVER.ipv4, OTHER_POD.ipv4})
    return res, compile_state([res.policy], [CLIENT, RESOLVER, OTHER_POD])


def test_dns_rules_redirect_udp_and_tcp_53_to_the_dns_proxy_with_the_names_they_admit():
    _, state = compiled({})
    ep = state.endpoints[1]
    resolver = state.endpoints[2].identity
    for proto in (Protocol.UDP, Protocol.TCP):
        d = lookup(ep, resolver, EG, proto, 53)
        assert d.verdict == Verdict.REDIRECT and d.proxy_port == DNS_PROXY_PORT, proto
    # Other resolvers are not in the rule: their DNS is dropped in the kernel.
    assert not lookup(ep, state.endpoints[3].identity, EG, Protocol.UDP, 53).allowed
    [dns] = ep.dns
    assert not ep.l7, "no Envoy listener for DNS"
    assert dns.proxy_port == DNS_PROXY_PORT and dns.key.port == 53
    [rule] = dns.peer_rules
    assert resolver in rule.identities
    assert rule.dns is not None
    assert rule.dns.matches("ALLOWED.test") and rule.dns.matches("a.cdn.test.")
    assert not rule.dns.matches("other.test") and not rule.dns.matches("a.b.cdn.test")


def test_to_fqdns_selects_nothing_before_a_pod_resolved_the_name():
    res, state = compiled({})
    ep = state.endpoints[1]
    assert ep.egress_enforced
    assert not lookup(ep, state.identity_of(ip_address("192.0.2.10")), EG, Protocol.TCP, 80).allowed
    assert any("selects nothing yet" in n for n in res.notes)


def test_to_fqdns_admits_exactly_the_resolved_addresses_of_matching_names():
    names = {"allowed.test.": {ip_address("192.0.2.10")}, "x.cdn.test.": {ip_address("192.0.2.20")},
             "other.test.": {ip_address("192.0.2.30")}}
    _, state = compiled(names)
    ep = state.endpoints[1]
    for addr, port, ok in (("192.0.2.10", 80, True), ("192.0.2.20", 80, True), ("192.0.2.10", 443, False),
                           ("192.0.2.30", 80, False), ("192.0.2.11", 80, False)):
        d = lookup(ep, state.identity_of(ip_address(addr)), EG, Protocol.TCP, port)
        assert d.allowed is ok, (addr, port)


def test_an_answer_naming_a_pod_never_opens_that_pod():
    """A resolver (or a tenant's own DNS server) answering allowed.test with
    another pod's address gains nothing: the pod keeps its own identity."""
    res, state = compiled({"allowed.test.": {OTHER_POD.ipv4, ip_address("192.0.2.10")}})
    ep = state.endpoints[1]
    assert not lookup(ep, state.endpoints[3].identity, EG, Protocol.TCP, 80).allowed
    assert lookup(ep, state.identity_of(ip_address("192.0.2.10")), EG, Protocol.TCP, 80).allowed
    assert any("10.0.0.3" in n and "cluster address" in n for n in res.notes)
    # Even unfiltered, a CIDR peer never selects a pod: the compiler's ipcache keeps the pod's identity.
    [policy] = load_text(POLICY, "fqdn.yaml").policies
    unfiltered = compile_state([resolve(policy, {"allowed.test.": {OTHER_POD.ipv4}}).policy], [CLIENT, RESOLVER, OTHER_POD])
    assert not lookup(unfiltered.endpoints[1], unfiltered.endpoints[3].identity, EG, Protocol.TCP, 80).allowed


def test_an_l4_allow_beside_a_dns_rule_lets_that_peer_ask_anything():
    text = POLICY + """  - toEndpoints: [{matchLabels: {app: other}}]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
  - toEndpoints: [{matchLabels: {app: other}}]
    toPorts:
    - ports: [{port: "53", protocol: UDP}]
      rules: {dns: [{matchName: only.test}]}
"""
    [policy] = load_text(text, "fqdn.yaml").policies
    state = compile_state([resolve(policy, {}).policy], [CLIENT, RESOLVER, OTHER_POD])
    [dns] = state.endpoints[1].dns
    other = state.endpoints[3].identity
    admitted = [r.dns for r in dns.peer_rules if other in r.identities]
    assert any(r.matches("anything.example") for r in admitted)
