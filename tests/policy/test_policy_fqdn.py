"""toFQDNs and DNS rules in the compiler: a DNS rule sends the port's UDP and
TCP to the agent's one DNS proxy, with the names it admits per resolver; a
toFQDNs item selects the addresses the node's pods resolved for a matching
name (policy/fqdn_resolve.py), never a cluster address, and nothing before
any pod asked (fail closed)."""

from __future__ import annotations

import json
from ipaddress import ip_address
from pathlib import Path

import pytest

from agent.cli import main
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


# ---------------------------------------------------------------- trace (CLI)


def trace_cli(capsys, tmp_path, *argv: str) -> tuple[int, dict]:
    f = tmp_path / "fqdn.yaml"
    f.write_text(POLICY)
    rc = main(["policy", "trace", "--policies", str(f), "--src", "labels:app=client", "-o", "json", *argv])
    out = capsys.readouterr()
    return rc, json.loads(out.out) if out.out.strip() else {"err": out.err}


@pytest.mark.parametrize("name, allowed", [("allowed.test", True), ("ALLOWED.TEST.", True), ("x.cdn.test", True),
                                           ("other.test", False), ("a.b.cdn.test", False)])
def test_trace_judges_a_dns_query_by_the_dns_rules(capsys, tmp_path, name, allowed):
    rc, got = trace_cli(capsys, tmp_path, "--dst", "labels:app=dns", "--dport", "53/UDP", "--dns-name", name)
    assert (rc == 0) is allowed and got["verdict"] == ("allowed" if allowed else "denied"), got
    assert got["layer"] == "l7" and got["redirected"]


def test_trace_takes_a_destination_name_with_the_addresses_it_resolves_to(capsys, tmp_path):
    rc, got = trace_cli(capsys, tmp_path, "--dst", "fqdn:Allowed.test", "--resolve", "allowed.test=192.0.2.10",
                        "--dport", "80")
    assert rc == 0 and got["verdict"] == "allowed", got
    rc, got = trace_cli(capsys, tmp_path, "--dst", "ip:192.0.2.10", "--dport", "80")
    assert rc == 1 and any("selects nothing yet" in n for n in got["notes"]), "unresolved, the name admits nothing"
    rc, got = trace_cli(capsys, tmp_path, "--dst", "fqdn:allowed.test", "--dport", "80")
    assert rc == 2 and "--resolve" in got["err"]


# ---------------------------------------------------------------- diff

def test_diff_reports_dns_names_added_and_removed_with_a_query_trace_agrees_with():
    from policy.diff import diff_policies
    from policy.diff_report import rule_text
    from policy.trace import Party, trace

    def policy(names: str) -> list:
        text = POLICY.replace("dns: [{matchName: Allowed.Test.}, {matchPattern: \"*.cdn.test\"}]", f"dns: [{names}]")
        return [resolve(p, {}).policy for p in load_text(text, "fqdn.yaml").policies]

    old = policy('{matchName: allowed.test}, {matchPattern: "*.cdn.test"}')
    new = policy('{matchName: allowed.test}, {matchPattern: "**.other.test"}')
    eps = [CLIENT, RESOLVER, OTHER_POD]
    d = diff_policies(old, new, eps)
    got = {(c.change, rule_text(c.http_rule), c.old, c.new, c.sample.name) for c in d.changes if c.layer == "l7"}
    assert got == {
        ("removed", "DNS for allowed.test., *.cdn.test.", "allowed", "denied", "x.cdn.test."),
        ("added", "DNS for allowed.test., **.other.test.", "denied", "allowed", "x.y.other.test."),
    }, got
    old_state, new_state = compile_state(old, eps), compile_state(new, eps)
    for c in d.changes:
        for state, want in ((old_state, c.old), (new_state, c.new)):
            r = trace(state, Party.endpoint(1), Party.endpoint(2), 53, c.protocol, dns_name=c.sample.name)
            assert r.verdict == want, (c, r.reason)


def test_replaying_observed_dns_queries_against_new_rules():
    """`policy diff --observed`: a DNS event (the proxy's monitor line) is
    judged again by the proposed DNS rules."""
    from agent.core.models import FlowEvent
    from policy.diff_observed import replay

    _, state = compiled({})

    def ev(name: str, verdict: str) -> FlowEvent:
        return FlowEvent(time=1.0, type="dns", protocol="UDP", src_ip="10.0.0.1", dst_ip="10.0.0.2", dst_port=53,
                         verdict=verdict, dns_name=name)

    report = replay([ev("allowed.test.", "forwarded"), ev("other.test.", "forwarded"), ev("x.cdn.test.", "denied"),
                     FlowEvent(time=1.0, type="dns", src_ip="10.0.0.1", dst_ip="10.0.0.2", dst_port=53, verdict="dropped")],
                    state)
    assert report.replayed == 3 and report.unchanged == 1
    got = {(g.key.old, g.key.new, g.example) for g in report.changed}
    assert got == {("allowed", "denied", "DNS query for other.test."), ("denied", "allowed", "DNS query for x.cdn.test.")}
    assert sum(report.skipped.values()) == 1


# ---------------------------------------------------------------- the example

@pytest.mark.parametrize("argv, verdict", [
    (["--dst", "labels:k8s-app=kube-dns,k8s:io.kubernetes.pod.namespace=kube-system", "--dport", "53/UDP",
      "--dns-name", "storage.example.com"], "allowed"),
    (["--dst", "labels:k8s-app=kube-dns,k8s:io.kubernetes.pod.namespace=kube-system", "--dport", "53/TCP",
      "--dns-name", "a.b.example.com"], "allowed"),
    (["--dst", "labels:k8s-app=kube-dns,k8s:io.kubernetes.pod.namespace=kube-system", "--dport", "53/UDP",
      "--dns-name", "example.org"], "denied"),
    (["--dst", "ip:8.8.8.8", "--dport", "53/UDP", "--dns-name", "storage.example.com"], "denied"),
    (["--dst", "fqdn:storage.example.com", "--resolve", "storage.example.com=203.0.113.7", "--dport", "443"], "allowed"),
    (["--dst", "fqdn:img.cdn.example.com", "--resolve", "img.cdn.example.com=203.0.113.8", "--dport", "443"], "allowed"),
    (["--dst", "fqdn:a.img.cdn.example.com", "--resolve", "a.img.cdn.example.com=203.0.113.9", "--dport", "443"],
     "denied"),
    (["--dst", "ip:203.0.113.7", "--dport", "443"], "denied"),
])
def test_the_dns_example_behaves_as_documented(capsys, argv, verdict):
    example = Path(__file__).resolve().parents[2] / "examples" / "cilium" / "dns-fqdn.yaml"
    rc = main(["policy", "trace", "--policies", str(example), "--src", "labels:app=uploader", "-o", "json", *argv])
    got = json.loads(capsys.readouterr().out)
    assert got["verdict"] == verdict and rc == (0 if verdict == "allowed" else 1), got["reason"]
