"""`policy diff --observed`, the pure half: replaying the agent's flow events
against a proposed policy set."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

from agent.core.models import FlowEvent
from policy.compiler import compile_state
from policy.diff_observed import replay
from policy.endpoint import Endpoint
from policy.load import load_paths

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
