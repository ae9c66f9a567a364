"""`policy diff`: the reported flows are exactly those whose trace verdict
changes, checked against trace on two independent compiles."""

from __future__ import annotations

import os
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy.compiled import CompiledState, Protocol
from policy.compiler import compile_state
from policy.diff import diff_policies
from policy.diff_report import ALLOWED, DENIED, FlowChange, PolicyDiff, rule_text
from policy.diff_samples import regex_samples, rule_samples
from policy.endpoint import Endpoint
from policy.load import load_paths
from policy.model import Policy
from policy.parse import parse_object
from policy.trace import HTTPRequest, Party, http_matches, trace

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = settings(max_examples=int(os.environ.get("POLICY_FUZZ_EXAMPLES", "150")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

STARWARS = [
    Endpoint(1, {"org": "empire", "class": "deathstar"}, IPv4Address("100.64.0.1")),
    Endpoint(2, {"org": "empire", "class": "tiefighter"}, IPv4Address("100.64.0.2")),
    Endpoint(3, {"org": "alliance", "class": "xwing"}, IPv4Address("100.64.0.3")),
]


def _verdict(state: CompiledState, src: Party, dst: Party, proto: Protocol, port: int, http: HTTPRequest | None) -> str:
    return trace(state, src, dst, port, proto, http).verdict


def _check_reported(d: PolicyDiff, old: CompiledState, new: CompiledState) -> None:
    for c in d.changes:
        http = c.sample if c.layer == "l7" else None
        ports = sorted({c.ports.lo, c.ports.hi})  # ports, or ICMP types
        for port in ports:
            got = (_verdict(old, c.src.party(), c.dst.party(), c.protocol, port, http),
                   _verdict(new, c.src.party(), c.dst.party(), c.protocol, port, http))
            assert got == (c.old, c.new), (c, got)


# ---------------------------------------------------------------- star wars


def test_starwars_l3l4_to_l7_denies_only_the_empires_other_http_requests():
    old = load_paths([ROOT / "examples/starwars/1-l3l4.yaml"]).policies
    new = load_paths([ROOT / "examples/starwars/2-l7.yaml"]).policies
    d = diff_policies(old, new, STARWARS)
    got = {(c.src.name, c.dst.name, c.protocol.name, str(c.ports), c.layer, c.old, c.new, rule_text(c.http_rule))
           for c in d.changes}
    assert got == {
        (src, "class=deathstar,org=empire", "TCP", "80", "l7", ALLOWED, DENIED, "any request")
        for src in ("class=tiefighter,org=empire", "class=deathstar,org=empire")
    }
    for c in d.changes:
        assert [rule_text(r) for r in c.new_http] == ["POST /v1/request-landing"]
    _check_reported(d, compile_state(old, STARWARS), compile_state(new, STARWARS))
    # The one request the new policy keeps is still allowed, the exhaust port now refused.
    new_state = compile_state(new, STARWARS)
    landing = HTTPRequest("POST", "/v1/request-landing")
    assert _verdict(new_state, Party.endpoint(2), Party.endpoint(1), Protocol.TCP, 80, landing) == ALLOWED
    assert not any(http_matches(r, landing) for c in d.changes if c.http_rule for r in [c.http_rule])


def test_same_policies_report_nothing():
    pols = load_paths([ROOT / "examples/starwars/2-l7.yaml"]).policies
    assert diff_policies(pols, pols, STARWARS).changes == ()


# ---------------------------------------------------------------- ports, CIDRs, rules


def _cnp(name: str, spec: dict[str, Any]) -> Policy:
    return parse_object({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                         "metadata": {"name": name, "namespace": "default"}, "spec": spec}, "t.yaml")


def test_port_range_split_where_either_side_changes():
    web = {"matchLabels": {"app": "web"}}
    old = [_cnp("p", {"endpointSelector": web, "ingress": [{"toPorts": [{"ports": [{"port": "80", "endPort": 90}]}]}]})]
    new = [_cnp("p", {"endpointSelector": web, "ingress": [{"toPorts": [{"ports": [{"port": "85", "endPort": 95}]}]}]})]
    eps = [Endpoint(1, {"app": "web"}, IPv4Address("100.64.0.1"))]
    d = diff_policies(old, new, eps)
    world_tcp = {(str(c.ports), c.old, c.new) for c in d.changes if c.src.name == "entity:world" and c.protocol == Protocol.TCP}
    assert world_tcp == {("80-84", ALLOWED, DENIED), ("91-95", DENIED, ALLOWED)}
    _check_reported(d, compile_state(old, eps), compile_state(new, eps))


def test_new_cidr_is_its_own_source_and_world_elsewhere_keeps_its_verdict():
    web = {"matchLabels": {"app": "web"}}
    old = [_cnp("p", {"endpointSelector": web, "ingress": [{"fromEntities": ["world"]}]})]
    new = [_cnp("p", {"endpointSelector": web, "ingress": [{"fromEntities": ["world"]}],
                      "ingressDeny": [{"fromCIDR": ["10.0.0.0/8"]}]})]
    eps = [Endpoint(1, {"app": "web"}, IPv4Address("100.64.0.1"))]
    d = diff_policies(old, new, eps)
    assert {(c.src.name, c.protocol.name, c.old, c.new) for c in d.changes} == {
        ("cidr:10.0.0.0/8", proto, ALLOWED, DENIED) for proto in ("TCP", "UDP", "SCTP", "ICMP", "ICMPV6")
    }
    _check_reported(d, compile_state(old, eps), compile_state(new, eps))


def test_http_rule_removed_and_added_are_reported_with_a_sample_trace_agrees_with():
    web = {"matchLabels": {"app": "web"}}

    def pol(http: list[dict[str, Any]]) -> list[Policy]:
        return [_cnp("p", {"endpointSelector": web, "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "cli"}}],
                            "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}], "rules": {"http": http}}]}]})]

    old = pol([{"method": "GET", "path": "/api/v1/items/[0-9]+"}, {"method": "DELETE", "path": "/api/v1/items/.*"}])
    new = pol([{"method": "GET", "path": "/api/v1/items/[0-9]+"}, {"method": "POST", "path": "/api/v2/(items|orders)"}])
    eps = [Endpoint(1, {"app": "web"}, IPv4Address("100.64.0.1")), Endpoint(2, {"app": "cli"}, IPv4Address("100.64.0.2"))]
    d = diff_policies(old, new, eps)
    got = {(c.change, rule_text(c.http_rule), c.old, c.new, c.sample.method, c.sample.path) for c in d.changes}
    assert got == {
        ("removed", "DELETE /api/v1/items/.*", ALLOWED, DENIED, "DELETE", "/api/v1/items/"),
        ("added", "POST /api/v2/(items|orders)", DENIED, ALLOWED, "POST", "/api/v2/items"),
    }
    _check_reported(d, compile_state(old, eps), compile_state(new, eps))


def test_regex_samples_are_full_matches_or_nothing():
    assert regex_samples("/v1/request-landing") == ("/v1/request-landing",)
    assert regex_samples("/a/[0-9]+/b\\.json")[0] == "/a/0/b.json"
    assert regex_samples("GET|HEAD") == ("GET",)
    assert regex_samples("(?i)get") == ()  # flags are not generated; no generic sample matches either
    assert regex_samples("(?i)get", ("GET",)) == ("GET",)
    assert rule_samples(None)[0] == HTTPRequest("GET", "/")


# ---------------------------------------------------------------- property: agrees with trace

APPS = ["a", "b", "c"]
ENDPOINTS = [Endpoint(i + 1, {"app": APPS[i % 3], **({"tier": "x"} if i == 3 else {})}, IPv4Address(f"100.64.0.{i + 1}"))
             for i in range(4)]
CIDRS = ["0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "192.168.0.0/16"]
ADDRESSES = ["10.1.2.3", "10.1.9.9", "10.7.0.1", "192.168.5.5", "8.8.8.8"]
PORTS = [1, 79, 80, 81, 85, 90, 91, 443, 8080, 65535]
HTTP_RULES = [
    {"method": "GET"}, {"method": "POST", "path": "/v1/.*"}, {"path": "/v1/x"}, {"method": "GET|PUT", "path": "/a/[0-9]+"},
    {"host": "api\\.example\\.com"}, {"headers": ["X-Token: s3cret"]}, {"method": "PUT", "headers": ["X-Debug"]}, {},
]
REQUESTS = [
    HTTPRequest("GET", "/"), HTTPRequest("POST", "/v1/x"), HTTPRequest("PUT", "/a/7"), HTTPRequest("DELETE", "/v1/y"),
    HTTPRequest("GET", "/a/1", host="api.example.com"), HTTPRequest("PUT", "/", headers={"X-Token": "s3cret"}),
    HTTPRequest("PUT", "/z", headers={"X-Debug": "1"}),
]


@st.composite
def _rule(draw: Any, direction: str, deny: bool) -> dict:
    pre = "from" if direction == "ingress" else "to"
    rule: dict[str, Any] = {}
    kind = draw(st.sampled_from(["endpoints", "entities", "cidr", "none"]))
    if kind == "endpoints":
        rule[f"{pre}Endpoints"] = [{"matchLabels": {"app": draw(st.sampled_from(APPS))}}]
    elif kind == "entities":
        rule[f"{pre}Entities"] = draw(st.lists(st.sampled_from(["all", "cluster", "host", "world"]), min_size=1, max_size=2))
    elif kind == "cidr":
        rule[f"{pre}CIDR"] = [draw(st.sampled_from(CIDRS))]
    if draw(st.integers(0, 4)) == 0:
        rule["icmps"] = [{"fields": [{"type": t, "family": f} for t, f in draw(
            st.lists(st.sampled_from([(8, "IPv4"), (0, "IPv4"), ("EchoRequest", "IPv6"), (255, "IPv6")]), min_size=1, max_size=2))]}]
    elif draw(st.booleans()):
        port = draw(st.sampled_from([80, 85, 443, 8080]))
        proto = draw(st.sampled_from(["TCP", "UDP", "SCTP", "ANY"]))
        p: dict[str, Any] = {"port": str(port), "protocol": proto}
        pr: dict[str, Any] = {"ports": [p]}
        if not deny and proto in ("TCP", "ANY") and draw(st.booleans()):
            pr["rules"] = {"http": draw(st.lists(st.sampled_from(HTTP_RULES), min_size=1, max_size=3))}
        elif draw(st.booleans()):
            p["endPort"] = port + draw(st.sampled_from([0, 5, 10]))
        rule["toPorts"] = [pr]
    return rule


@st.composite
def _policy(draw: Any, name: str) -> Policy:
    spec: dict[str, Any] = {"endpointSelector": {"matchLabels": {"app": draw(st.sampled_from(APPS))}}}
    for section, direction, deny in (("ingress", "ingress", False), ("egress", "egress", False),
                                     ("ingressDeny", "ingress", True), ("egressDeny", "egress", True)):
        if draw(st.integers(0, 2)) == 0:
            spec[section] = draw(st.lists(_rule(direction, deny), max_size=2))
    return _cnp(name, spec)


@st.composite
def _policy_pair(draw: Any) -> tuple[list[Policy], list[Policy]]:
    old = [draw(_policy(f"p{i}")) for i in range(draw(st.integers(0, 3)))]
    new = list(old)
    # Small edits, as a real rollout: replace, add or drop a policy.
    for _ in range(draw(st.integers(1, 2))):
        op = draw(st.sampled_from(["replace", "add", "drop"]))
        if op == "add" or not new:
            new.append(draw(_policy(f"q{len(new)}")))
        elif op == "replace":
            i = draw(st.integers(0, len(new) - 1))
            new[i] = draw(_policy(new[i].key.rpartition("/")[2]))
        else:
            new.pop(draw(st.integers(0, len(new) - 1)))
    return old, new


def _parties() -> list[Party]:
    return ([Party.endpoint(e.id) for e in ENDPOINTS] + [Party.entity(n) for n in ("world", "host", "remote-node")]
            + [Party.address(a) for a in ADDRESSES])


def _ids(state: CompiledState, p: Party) -> int:
    if p.endpoint_id is not None:
        return state.endpoints[p.endpoint_id].identity
    if p.ip is not None:
        return state.identity_of(p.ip)
    return p.identity  # type: ignore[return-value]


def _covered(d: PolicyDiff, src: Party, dst: Party, proto: Protocol, port: int, req: HTTPRequest | None) -> bool:
    s = (_ids(d.old, src), _ids(d.new, src))
    t = (_ids(d.old, dst), _ids(d.new, dst))
    for c in d.changes:
        if ((c.src.old_identity, c.src.new_identity) != s or (c.dst.old_identity, c.dst.new_identity) != t
                or c.protocol != proto or not c.ports.contains(port)):
            continue
        if c.layer == "l3l4" or (req is not None and (c.http_rule is None or http_matches(c.http_rule, req))):
            return True
    return False


@SETTINGS
@given(_policy_pair(), st.data())
def test_diff_agrees_with_trace_on_random_policy_pairs(pair, data):
    old_pols, new_pols = pair
    d = diff_policies(old_pols, new_pols, ENDPOINTS)
    # Independent one-shot compiles: trace answers from them, not from the diff's own states.
    old, new = compile_state(old_pols, ENDPOINTS), compile_state(new_pols, ENDPOINTS)
    _check_reported(d, old, new)
    # Every HTTP request between local endpoints on the ports rules name ...
    for src in ENDPOINTS:
        for dst in ENDPOINTS:
            for port in (80, 85, 443, 8080):
                for req in REQUESTS:
                    a, b = Party.endpoint(src.id), Party.endpoint(dst.id)
                    if _verdict(old, a, b, Protocol.TCP, port, req) != _verdict(new, a, b, Protocol.TCP, port, req):
                        assert _covered(d, a, b, Protocol.TCP, port, req), (src, dst, port, req, d.changes)
    # ... and random flows between any ends.
    parties = _parties()
    for _ in range(40):
        src, dst = data.draw(st.sampled_from(parties)), data.draw(st.sampled_from(parties))
        if src.endpoint_id is None and dst.endpoint_id is None:
            continue
        proto = data.draw(st.sampled_from([Protocol.TCP, Protocol.UDP, Protocol.SCTP, Protocol.ICMP, Protocol.ICMPV6]))
        typed = proto in (Protocol.ICMP, Protocol.ICMPV6)
        port = data.draw(st.sampled_from([0, 8, 128, 255])) if typed else data.draw(st.sampled_from(PORTS))
        req = data.draw(st.none() | st.sampled_from(REQUESTS)) if proto == Protocol.TCP else None
        before, after = _verdict(old, src, dst, proto, port, req), _verdict(new, src, dst, proto, port, req)
        if before != after:
            assert _covered(d, src, dst, proto, port, req), (src, dst, proto, port, req, before, after, d.changes)


def test_flow_change_json_names_the_rule_and_sample():
    c = diff_policies(load_paths([ROOT / "examples/starwars/1-l3l4.yaml"]).policies,
                      load_paths([ROOT / "examples/starwars/2-l7.yaml"]).policies, STARWARS).changes[0]
    assert isinstance(c, FlowChange)
    d = c.to_dict()
    assert d["layer"] == "l7" and d["http_rule"] is None and d["sample"] == {"method": "GET", "path": "/"}
    assert d["new_http_rules"] == [{"method": "POST", "path": "/v1/request-landing"}]
