"""`policy suggest`: least-privilege policies from observed flows. What it
writes validates, admits every flow it came from (trace, and `diff
--observed` finds no would-be drop), selects by stable labels, generalises
numeric path segments, names outside peers by the names the pods resolved,
and never takes a drop or a denial as traffic."""

from __future__ import annotations

import json
from ipaddress import IPv4Address
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.cli import main
from agent.core.models import FlowEvent
from policy.compiler import compile_state
from policy.diff_observed import replay
from policy.endpoint import Endpoint
from policy.families import Stack
from policy.fqdn_resolve import resolve_all as resolve_fqdns
from policy.load import load_text
from policy.suggest import path_pattern, suggest

NS = "k8s:io.kubernetes.pod.namespace=default"
PODS = {  # endpoint id -> (labels, address)
    1: (["k8s:org=empire", "k8s:class=tiefighter", "k8s:pod-template-hash=7d9f", NS], "10.0.0.1"),
    2: (["k8s:org=empire", "k8s:class=deathstar", NS], "10.0.0.2"),
    3: (["k8s:org=alliance", "k8s:class=xwing", NS], "10.0.0.3"),
    4: (["k8s:k8s-app=kube-dns", "k8s:io.kubernetes.pod.namespace=kube-system"], "10.0.0.4"),
}


def ev(type_: str, src: int | str, dst: int | str, port: int, protocol: str = "TCP", verdict: str | None = None,
       **extra: Any) -> FlowEvent:
    def side(x: int | str, prefix: str) -> dict:
        if isinstance(x, int):
            labels, ip = PODS[x]
            return {f"{prefix}_ip": ip, f"{prefix}_labels": labels, f"{prefix}_endpoint_id": x}
        if x == "host":
            return {f"{prefix}_ip": "10.0.0.254", f"{prefix}_labels": ["reserved:host"]}
        return {f"{prefix}_ip": x, f"{prefix}_labels": ["reserved:world"]}
    return FlowEvent(time=1.0, type=type_, protocol=protocol, dst_port=port, verdict=verdict,
                     **side(src, "src"), **side(dst, "dst"), **extra)


def endpoints() -> list[Endpoint]:
    out = []
    for i, (labels, ip) in PODS.items():
        out.append(Endpoint(i, {k.split(":", 1)[1].split("=")[0]: k.split("=", 1)[1] for k in labels}, IPv4Address(ip)))
    return out


def compiled(docs: list[dict], names: dict | None = None):
    text = yaml.safe_dump_all(docs)
    res = load_text(text, "suggested.yaml")
    assert res.ok, [str(e) for e in res.errors]
    policies, _ = resolve_fqdns(res.policies, names or {})
    return compile_state(policies, endpoints(), host_ips=[IPv4Address("10.0.0.254")], stack=Stack.DUAL)


TRAFFIC = [
    ev("forward", 1, 2, 80),
    ev("l7", 1, 2, 80, "HTTP", "forwarded", method="POST", path="/v1/request-landing"),
    ev("l7", 1, 2, 80, "HTTP", "forwarded", method="GET", path="/v1/ships/42"),
    ev("l7", 1, 2, 80, "HTTP", "audit", method="GET", path="/v1/ships/7?full=1"),
    ev("audit", "host", 2, 8080),
    ev("redirect", 1, 4, 53, "UDP"),
    ev("dns", 1, 4, 53, "UDP", "forwarded", dns_name="api.example.com.", dns_addresses=["203.0.113.7"]),
    ev("forward", 1, "203.0.113.7", 443),
    ev("forward", 1, "198.51.100.9", 8443),
    # Never taken as traffic: a drop, an L7 denial, a refused DNS query.
    ev("drop", 3, 2, 80),
    ev("l7", 1, 2, 80, "HTTP", "denied", method="PUT", path="/v1/exhaust-port"),
    ev("dns", 1, 4, 53, "UDP", "denied", dns_name="evil.org."),
]


def test_suggested_policies_validate_and_admit_exactly_what_was_seen():
    suggestions, skipped = suggest(TRAFFIC)
    docs = [s.document() for s in suggestions]
    assert skipped == {"dropped or denied": 3}
    by_name = {d["metadata"]["name"]: d for d in docs}
    assert set(by_name) == {"suggested-deathstar", "suggested-tiefighter", "suggested-kube-dns"}
    fighter = by_name["suggested-tiefighter"]["spec"]
    assert fighter["endpointSelector"] == {"matchLabels": {"class": "tiefighter", "org": "empire"}}, "stable labels only"

    names = {"api.example.com.": {IPv4Address("203.0.113.7")}}
    state = compiled(docs, names)
    report = replay([e for e in TRAFFIC if e.verdict not in ("denied",) and e.type != "drop"], state)
    assert report.changed == [], [(g.key, g.example) for g in report.changed]
    assert report.replayed >= 8

    def verdict(events):
        return [g.key.new for g in replay(events, state).changed] or ["allowed"]

    # Beyond what was seen: other paths, methods, names, ports and peers are refused.
    assert verdict([ev("l7", 1, 2, 80, "HTTP", "forwarded", method="PUT", path="/v1/exhaust-port")]) == ["denied"]
    assert verdict([ev("l7", 1, 2, 80, "HTTP", "forwarded", method="GET", path="/v1/ships/x")]) == ["denied"]
    assert verdict([ev("forward", 3, 2, 80)]) == ["denied"], "the xwing's dropped flow was not turned into an allow"
    assert verdict([ev("dns", 1, 4, 53, "UDP", "forwarded", dns_name="evil.org.")]) == ["denied"]
    assert verdict([ev("forward", 1, "203.0.113.8", 443)]) == ["denied"]
    assert verdict([ev("forward", 1, 2, 443)]) == ["denied"]


def test_outside_addresses_a_pod_resolved_become_names_and_the_dns_rule_lets_it_learn_them():
    [fighter] = [s for s in suggest(TRAFFIC)[0] if s.workload.name == "suggested-tiefighter"]
    egress = fighter.document()["spec"]["egress"]
    assert {"toFQDNs": [{"matchName": "api.example.com"}],
            "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]} in egress
    assert {"toCIDR": ["198.51.100.9/32"], "toPorts": [{"ports": [{"port": "8443", "protocol": "TCP"}]}]} in egress
    [dns] = [e for e in egress if e.get("toEndpoints") == [
        {"matchLabels": {"k8s-app": "kube-dns", "io.kubernetes.pod.namespace": "kube-system"}}]]
    assert dns["toPorts"] == [{"ports": [{"port": "53", "protocol": "ANY"}], "rules": {"dns": [{"matchName": "api.example.com"}]}}]


def test_numeric_path_segments_are_generalised_unless_exact_paths_are_asked():
    assert path_pattern("/v1/users/42/orders/7") == "/v1/users/[0-9]+/orders/[0-9]+"
    assert path_pattern("/v1/users/42?x=1") == "/v1/users/[0-9]+(\\?.*)?"
    assert path_pattern("/a.b/c+d") == "/a\\.b/c\\+d"
    assert path_pattern("/v1/users/42", exact=True) == "/v1/users/42"


def test_the_cli_reads_a_monitor_file_and_writes_valid_yaml(capsys, tmp_path):
    flows = tmp_path / "flows.json"
    flows.write_text("Listening for flows...\n" + "\n".join(e.model_dump_json(exclude_none=True) for e in TRAFFIC) + "\n")
    out = tmp_path / "suggested"
    assert main(["policy", "suggest", "--flows", str(flows), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "# 12 events, 3 workloads" in err and "skipped 3 events: dropped or denied" in err
    assert "ingress default/class=deathstar" not in err  # rules are named by peer, counted
    assert main(["policy", "validate", str(out)]) == 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "nonsense"}) + "\n")
    assert main(["policy", "suggest", "--flows", str(bad)]) == 2
    assert f"{bad}:1: not a flow event" in capsys.readouterr().err


# ---------------------------------------------------------------- property

_PORTS = st.sampled_from([53, 80, 443, 5432, 8080])
_PATHS = st.sampled_from(["/", "/v1/users/1", "/v1/users/22", "/v2/items", "/a.b", "/q?x=1", "/x+y"])


@st.composite
def _flow(draw: Any) -> FlowEvent:
    src = draw(st.sampled_from([1, 2, 3, "host", "192.0.2.5"]))
    dst = draw(st.sampled_from([1, 2, 3, 4, "198.51.100.1"]))
    if not isinstance(src, int) and not isinstance(dst, int):
        dst = 2
    if draw(st.booleans()) and isinstance(dst, int):
        return ev("l7", src, dst, draw(_PORTS), "HTTP", draw(st.sampled_from(["forwarded", "audit"])),
                  method=draw(st.sampled_from(["GET", "POST", "PUT"])), path=draw(_PATHS))
    return ev(draw(st.sampled_from(["forward", "audit", "redirect"])), src, dst, draw(_PORTS),
              draw(st.sampled_from(["TCP", "UDP", "SCTP"])))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_flow(), min_size=1, max_size=25), st.booleans())
def test_the_suggestion_admits_every_flow_it_came_from(flows, exact):
    suggestions, _ = suggest(flows, exact_paths=exact)
    state = compiled([s.document() for s in suggestions])
    report = replay(flows, state)
    assert report.changed == [], [(g.key, g.example) for g in report.changed]


def test_ipv6_peers_are_suggested_as_128s():
    flows = [ev("forward", 1, "2001:db8::7", 443), ev("forward", "2001:db8::9", 2, 8080)]
    suggestions, _ = suggest(flows)
    docs = {s.workload.name: s.document()["spec"] for s in suggestions}
    assert docs["suggested-tiefighter"]["egress"] == [
        {"toCIDR": ["2001:db8::7/128"], "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]}]
    assert docs["suggested-deathstar"]["ingress"] == [
        {"fromCIDR": ["2001:db8::9/128"], "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]}]
    state = compiled([s.document() for s in suggestions])
    assert replay(flows, state).changed == []


def test_a_hostile_namespace_label_cannot_write_outside_the_output_directory(capsys, tmp_path):
    PODS[9] = (["k8s:app=evil", "k8s:io.kubernetes.pod.namespace=../../escaped"], "10.0.0.9")
    try:
        flows = tmp_path / "flows.json"
        flows.write_text(ev("forward", 9, "198.51.100.1", 443).model_dump_json() + "\n")
        out = tmp_path / "out" / "suggested"
        assert main(["policy", "suggest", "--flows", str(flows), "--out", str(out)]) == 0
        written = [p for p in tmp_path.rglob("*.yaml")]
        assert written and all(p.parent == out for p in written), written
    finally:
        del PODS[9]
