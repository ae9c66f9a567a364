"""Flows say who: both identities, their labels, pod name and namespace on
kernel and L7 events; `ciliate monitor` filters and its one-line form."""

from __future__ import annotations

import asyncio
import json
from ipaddress import IPv4Address

import httpx
import pytest

from agent.cli.monitor import format_flow
from agent.core.agent import Agent
from agent.core.flow_filter import FilterError, FlowFilter
from agent.core.models import EndpointCreate, FlowEvent
from tests.agent.conftest import Rig
from tests.agent.test_agent_core import settle
from tests.agent.test_api import client, run_cli, served  # noqa: F401  (fixture)

L4 = {"name": "l4", "selector": {"class": "deathstar"}, "allowFrom": {"org": "empire"}, "port": 80}
NS = "io.kubernetes.pod.namespace"
PODS = {
    "deathstar": ("10.200.0.10", {"org": "empire", "class": "deathstar"}),
    "tiefighter": ("10.200.0.11", {"org": "empire", "class": "tiefighter"}),
    "xwing": ("10.200.0.12", {"org": "alliance", "class": "xwing"}),
}


async def add_pods(agent: Agent) -> dict[str, int]:
    """The star-wars pods as the CNI plugin registers them under Kubernetes."""
    ids = {}
    for name, (ip, labels) in PODS.items():
        req = EndpointCreate(
            container_id=f"cid-{name}", host_ifname=f"lxc{name}"[:15], ipv4=IPv4Address(ip),
            labels={**labels, f"k8s:{NS}": "default"}, name=f"default/{name}",
        )
        view, _ = await agent.create_endpoint(req, wait=5)
        ids[name] = view.identity
    return ids


async def next_event(resp_lines) -> dict:
    return json.loads(await asyncio.wait_for(resp_lines.__anext__(), 5))


async def test_l7_and_kernel_events_carry_identities_labels_and_pods(served, rig: Rig) -> None:
    agent, sock = served
    ids = await add_pods(agent)
    rig.write_policy("l4.json", [L4])
    await settle(agent)
    async with client(sock) as c:
        async with c.stream("GET", "/v1/flows") as resp:
            while agent.flows.subscribers == 0:
                await asyncio.sleep(0.01)
            # Envoy's access log knows only addresses.
            rig.proxy.log.put_nowait({
                "type": "l7", "src_ip": "10.200.0.11", "src_port": 40000, "dst_ip": "10.200.0.10", "dst_port": 80,
                "method": "PUT", "path": "/v1/exhaust-port", "status": 403, "verdict": "denied",
            })
            # The kernel knows identities (and the source's address).
            rig.datapath.events.put_nowait({
                "type": "drop", "src_ip": "10.200.0.12", "dst_ip": "10.200.0.10", "dst_port": 80,
                "src_identity": ids["xwing"], "dst_identity": ids["deathstar"], "verdict": "drop", "reason": "policy-deny",
                "direction": "ingress",
            })
            # An address outside every endpoint is the world.
            rig.proxy.log.put_nowait({"type": "l7", "src_ip": "192.0.2.7", "dst_ip": "10.200.0.10", "dst_port": 80, "verdict": "forwarded"})
            lines = resp.aiter_lines()
            got = [await next_event(lines) for _ in range(3)]  # two pumps: any order between them
    by_kind = {(e["type"], e["verdict"]): e for e in got}
    l7, drop, world = by_kind["l7", "denied"], by_kind["drop", "drop"], by_kind["l7", "forwarded"]
    assert (l7["src_identity"], l7["dst_identity"]) == (ids["tiefighter"], ids["deathstar"])
    assert "k8s:class=tiefighter" in l7["src_labels"] and "k8s:class=deathstar" in l7["dst_labels"]
    assert (l7["src_pod"], l7["src_namespace"], l7["dst_pod"], l7["dst_namespace"]) == ("tiefighter", "default", "deathstar", "default")
    assert (drop["src_pod"], drop["dst_pod"]) == ("xwing", "deathstar")
    assert "k8s:org=alliance" in drop["src_labels"]
    assert world["src_identity"] == 2 and world["src_labels"] == ["reserved:world"] and "src_pod" not in world


async def test_monitor_filters_are_applied_by_the_agent(served, rig: Rig) -> None:
    agent, sock = served
    ids = await add_pods(agent)
    rig.write_policy("l4.json", [L4])
    await settle(agent)
    params = [("from_label", "org=alliance"), ("from_label", "k8s:class=tiefighter"), ("to_label", "class=deathstar"),
              ("verdict", "DROPPED"), ("verdict", "denied"), ("port", "80")]
    async with client(sock) as c:
        async with c.stream("GET", "/v1/flows", params=params) as resp:
            assert resp.status_code == 200
            while agent.flows.subscribers == 0:
                await asyncio.sleep(0.01)
            x, t, d = "10.200.0.12", "10.200.0.11", "10.200.0.10"
            for ev in (
                {"type": "forward", "src_ip": t, "dst_ip": d, "dst_port": 80, "verdict": "forward"},  # verdict
                {"type": "drop", "src_ip": x, "dst_ip": d, "dst_port": 8080, "verdict": "drop"},  # port
                {"type": "drop", "src_ip": d, "dst_ip": x, "dst_port": 80, "verdict": "drop"},  # from/to
                {"type": "drop", "src_ip": x, "dst_ip": d, "dst_port": 80, "verdict": "drop", "reason": "kept-1"},
            ):
                rig.datapath.events.put_nowait(ev)
            rig.proxy.log.put_nowait({"type": "l7", "src_ip": t, "dst_ip": d, "dst_port": 80, "verdict": "denied", "path": "/kept-2"})
            lines = resp.aiter_lines()
            got = sorted([await next_event(lines), await next_event(lines)], key=lambda e: e["type"])
            while agent.flows.published < 5:
                await asyncio.sleep(0.01)
    drop, l7 = got
    assert (drop["reason"], l7["path"]) == ("kept-1", "/kept-2")
    assert drop["src_identity"] == ids["xwing"]
    assert agent.flows.published == 5


@pytest.mark.parametrize(
    "params, needle",
    [
        ({"verdict": "maybe"}, "verdict: 'maybe'"),
        ({"port": "http"}, "port: 'http'"),
        ({"port": "70000"}, "port: '70000'"),
        ({"type": "everything"}, "type: 'everything'"),
        ({"from_label": "app=a,"}, "from_label"),
        ({"to_label": "=x"}, "to_label"),
    ],
)
async def test_a_bad_filter_is_a_400_naming_it(served, params, needle) -> None:
    _, sock = served
    async with client(sock) as c:
        r = await c.get("/v1/flows", params=params)
    assert r.status_code == 400 and needle in r.json()["detail"]


def test_label_selectors_read_like_hubbles() -> None:
    e = FlowEvent(time=0, type="drop", src_labels=["k8s:org=empire", "k8s:class=tiefighter"], dst_labels=["reserved:world"])
    assert FlowFilter.parse(from_labels=["org=empire"]).matches(e)
    assert FlowFilter.parse(from_labels=["k8s:org=empire,class=tiefighter"]).matches(e)
    assert not FlowFilter.parse(from_labels=["org=empire,class=xwing"]).matches(e)  # commas: all
    assert FlowFilter.parse(from_labels=["class=xwing", "org"]).matches(e)  # repeated: any; key alone: exists
    assert FlowFilter.parse(to_labels=["reserved:world"]).matches(e)
    assert not FlowFilter.parse(to_labels=["org=empire"]).matches(e)
    with pytest.raises(FilterError, match="port"):
        FlowFilter.parse(ports=["٣"])  # a Unicode digit is not a port


def test_the_human_line_names_pods_labels_verdict_and_request() -> None:
    base = dict(time=1_700_000_000.25, src_pod="tiefighter", src_namespace="default", src_port=43210,
                src_labels=["k8s:class=tiefighter", f"k8s:{NS}=default", "k8s:org=empire"],
                dst_pod="deathstar", dst_namespace="default", dst_port=80, dst_labels=["k8s:class=deathstar", "k8s:org=empire"])
    l7 = format_flow(FlowEvent(type="l7", verdict="denied", method="PUT", path="/v1/exhaust-port", status=403, **base))
    assert l7.endswith(
        "default/tiefighter:43210 (class=tiefighter,org=empire) -> default/deathstar:80 (class=deathstar,org=empire) "
        "l7 DENIED PUT /v1/exhaust-port 403"
    )
    assert ".250 " in l7
    drop = format_flow(FlowEvent(type="drop", verdict="drop", reason="policy-deny", direction="ingress", **base))
    assert drop.endswith("-> default/deathstar:80 (class=deathstar,org=empire) drop DROPPED policy-deny (ingress)")
    bare = format_flow(FlowEvent(time=0, type="forward", verdict="forward", src_ip="192.0.2.7", dst_ip="10.0.0.1", dst_identity=300))
    assert "192.0.2.7 -> 10.0.0.1 (identity 300) forward FORWARDED" in bare


async def test_cli_monitor_prints_the_human_line_with_filters(served, rig: Rig, capsys) -> None:
    agent, sock = served
    await add_pods(agent)
    await settle(agent)

    async def feed() -> None:
        while agent.flows.subscribers == 0:
            await asyncio.sleep(0.01)
        rig.proxy.log.put_nowait({"type": "l7", "src_ip": "10.200.0.11", "dst_ip": "10.200.0.10", "dst_port": 80,
                                  "verdict": "forwarded", "method": "GET", "path": "/", "status": 200})
        rig.proxy.log.put_nowait({"type": "l7", "src_ip": "10.200.0.11", "src_port": 40001, "dst_ip": "10.200.0.10", "dst_port": 80,
                                  "verdict": "denied", "method": "PUT", "path": "/v1/exhaust-port", "status": 403})

    feeder = asyncio.create_task(feed())
    argv = ["monitor", "--verdict", "denied", "--from-label", "class=tiefighter", "--to-label", "class=deathstar",
            "--port", "80", "--type", "l7", "-n", "1", "--socket", str(sock)]
    code, out, _ = await run_cli(argv, capsys)
    await feeder
    (line,) = out.splitlines()
    assert code == 0
    assert "default/tiefighter:40001 (class=tiefighter,org=empire) -> default/deathstar:80 (class=deathstar,org=empire) l7 DENIED PUT /v1/exhaust-port 403" in line
