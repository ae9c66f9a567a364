"""`policy diff --observed`, the pure half: replaying the agent's flow events
against a proposed policy set."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from agent.core.models import FlowEvent
from policy.compiler import compile_state
from policy.diff_observed import host_port, replay
from policy.endpoint import Endpoint
from policy.families import Stack
from policy.load import load_paths, load_text

ROOT = Path(__file__).resolve().parents[2]
EPS = [
    Endpoint(1, {"org": "empire", "class": "deathstar"}, IPv4Address("10.200.0.1")),
    Endpoint(2, {"org": "empire", "class": "tiefighter"}, IPv4Address("10.200.0.2")),
    Endpoint(3, {"org": "alliance", "class": "xwing"}, IPv4Address("10.200.0.3")),
]


def _l7(t: float, method: str, path: str, status: int = 200) -> FlowEvent:
    return FlowEvent(time=t, type="l7", protocol="HTTP", src_ip="10.200.0.2", dst_ip="10.200.0.1", dst_port=80,
                     method=method, path=path, status=status, verdict="forwarded" if status != 403 else "denied")


def test_l4_traffic_replayed_against_the_l7_policy_counts_what_would_be_dropped():
    proposed = compile_state(load_paths([ROOT / "examples/starwars/2-l7.yaml"]).policies, EPS)
    events = [_l7(1000.0 + i, "PUT", "/v1/exhaust-port") for i in range(1204)]
    events += [_l7(1000.0, "POST", "/v1/request-landing")] * 3
    events.append(FlowEvent(time=1001.0, type="drop", protocol="TCP", src_ip="10.200.0.3", dst_ip="10.200.0.1",
                            dst_port=80, verdict="drop", reason="policy-deny"))
    events.append(FlowEvent(time=1001.0, type="agent", summary="policy applied"))
    r = replay(events, proposed)
    assert r.replayed == 1208 and r.unchanged == 4 and r.skipped == {"not a flow": 1}
    [g] = r.changed
    assert g.count == 1204 and g.key.layer == "l7" and (g.key.old, g.key.new) == ("allowed", "denied")
    assert g.sentence() == ("your new policy would have dropped 1,204 requests from class=tiefighter,org=empire "
                            "to class=deathstar,org=empire:80/TCP")
    assert g.example == "PUT /v1/exhaust-port" and (g.first, g.last) == (1000.0, 2203.0)


def test_newly_allowed_flows_and_unreplayable_events():
    proposed = compile_state([], EPS)  # no policy: everything passes
    events = [
        FlowEvent(time=1.0, type="drop", protocol="TCP", src_ip="10.200.0.3", dst_ip="10.200.0.1", dst_port=80,
                  verdict="drop", reason="policy-deny"),
        FlowEvent(time=2.0, type="drop", protocol="TCP", src_ip="10.200.0.3", dst_ip="10.200.0.1", dst_port=80,
                  verdict="drop", reason="ct-invalid"),
        FlowEvent(time=3.0, type="forward", protocol="TCP", src_ip="8.8.8.8", dst_ip="1.1.1.1", dst_port=53, verdict="forward"),
        FlowEvent(time=4.0, type="forward", protocol="TCP", src_ip="10.200.0.3", dst_ip="10.200.0.1", verdict="forward"),
    ]
    r = replay(events, proposed)
    assert [(g.key.src, g.key.dst, g.key.port, g.key.new, g.count) for g in r.changed] == [
        ("class=xwing,org=alliance", "class=deathstar,org=empire", 80, "allowed", 1)]
    assert r.skipped == {"dropped for another reason than policy": 1, "no local endpoint in the proposed state": 1,
                         "no destination port": 1}


def test_ipv6_addresses_are_bracketed_before_a_port_and_a_pod_is_found_by_its_ipv6():
    """As Hubble prints them ([addr]:port); the JSON keeps them bare."""
    web = Endpoint(1, {"app": "web"}, IPv4Address("10.200.0.1"), IPv6Address("fd00:200::1"))
    deny_all = ("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: lock}\nspec:\n"
                "  endpointSelector: {matchLabels: {app: web}}\n  egress: [{}]\n  ingress: [{}]\n")
    proposed = compile_state(load_text(deny_all, "t.yaml").policies, [web], stack=Stack.DUAL)
    events = [
        FlowEvent(time=1.0, type="forward", protocol="TCP", src_ip="fd00:200::1", dst_ip="2001:db8::7", dst_port=443, verdict="forward"),
        FlowEvent(time=2.0, type="forward", protocol="TCP", src_ip="2001:db8::9", dst_ip="fd00:200::1", dst_port=80, verdict="forward"),
    ]
    into, out = replay(events, proposed).changed  # sorted by name: "2001:..." before "app=web"
    assert out.sentence() == "your new policy would have dropped 1 flows from app=web to [2001:db8::7]:443/TCP (world-ipv6)"
    assert out.example == "fd00:200::1 -> [2001:db8::7]:443" and out.to_dict()["dst"] == "2001:db8::7 (world-ipv6)"
    assert into.key.dst == "app=web" and into.example == "2001:db8::9 -> [fd00:200::1]:80"
    assert host_port("10.0.0.1 (world)", 80, "TCP") == "10.0.0.1 (world):80/TCP"  # IPv4 as it always was
    assert host_port("app=web", 80) == "app=web:80"
