"""The star-wars stages over IPv6 through the real agent, kernel datapath
and Envoy, on a node whose pods are dual-stack (ciliate-cni with host-local
ranges of both families): the xwing's SYN dropped in the kernel (the
deathstar never sees it), the exhaust port answered 403 by Envoy, the
landing served with the tiefighter's own IPv6 address as the source the
deathstar sees; `ciliate monitor` reports IPv6 flows; and the same policy
still decides IPv4 exactly as before, on the same pods."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.node import Lines, Node
from demo.scenario import PODS
from tests.monitor_proc import MonitorProc

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "starwars"
LAND = ("POST", "/v1/request-landing")
EXHAUST = ("PUT", "/v1/exhaust-port")

pytestmark = [pytest.mark.privileged, pytest.mark.envoy]


@pytest.fixture
def node() -> Iterator[Node]:
    with Node(prefix="cil6e2e", subnet="10.214.0.0/24", subnet6="fd00:10:214::/64") as n:
        yield n


def outcome(node: Node, ship: str, req: tuple[str, str], family: int) -> str:
    ds = node.pods["deathstar"]
    dst = f"[{ds.ip6}]:80" if family == 6 else f"{ds.ip}:80"
    got = node.request(ship, req[0], dst, req[1])
    return str(got["status"]) if "status" in got else ("dropped" if got.get("error") == "timeout" else str(got))


def hits(server: Lines, client: str | None) -> list[dict]:
    return [ln for ln in server.snapshot() if ln.get("client") == client]


def test_starwars_over_ipv6_and_ipv4_on_dual_stack_pods(node: Node) -> None:
    node.start_agent()
    for pod in PODS:
        node.add_pod(pod.name, pod.labels)
    tie, xwing, ds = (node.pods[n] for n in ("tiefighter", "xwing", "deathstar"))
    assert tie.ip6 and xwing.ip6 and ds.ip6, "the pods are dual-stack"
    eps = {e["id"]: e for e in node.ciliate_json("endpoint", "list")["endpoints"]}
    assert eps[tie.endpoint_id]["ipv6"] == tie.ip6 and eps[tie.endpoint_id]["state"] == "ready"
    status = node.ciliate_json("status")
    assert status["families"]["ipv6"]["enforced"] is True, status["families"]
    server = node.watch(node.serve_deathstar())

    observed: list[tuple[str, str, str, str]] = []

    def check(stage: str, ship: str, req: tuple[str, str], family: int, expected: str) -> None:
        observed.append((stage, f"{ship} {req[0]} {req[1]} IPv{family}", expected, outcome(node, ship, req, family)))

    for family in (6, 4):
        check("no policy", "xwing", LAND, family, "200")
    assert hits(server, xwing.ip6) and hits(server, xwing.ip)

    node.apply_policy(EXAMPLES / "1-l3l4.yaml", name="starwars.yaml")
    before = len(hits(server, xwing.ip6))
    for family in (6, 4):
        check("L3/L4", "tiefighter", LAND, family, "200")
        check("L3/L4", "xwing", LAND, family, "dropped")
    assert len(hits(server, xwing.ip6)) == before, "a dropped IPv6 request reached the deathstar"

    node.apply_policy(EXAMPLES / "2-l7.yaml", name="starwars.yaml")
    monitor = MonitorProc(node.socket, "--type", "drop", "--type", "l7")
    try:
        landed = len(hits(server, tie.ip6))
        for family in (6, 4):
            check("L7", "tiefighter", EXHAUST, family, "403")
            check("L7", "xwing", LAND, family, "dropped")
            check("L7", "tiefighter", LAND, family, "200")
        want = {(tie.ip6, "PUT", "/v1/exhaust-port", 403), (tie.ip6, "POST", "/v1/request-landing", 200)}

        def l7_of(events: list[dict]) -> set:
            return {(e.get("src_ip"), e.get("method"), e.get("path"), e.get("status")) for e in events if e["type"] == "l7"}

        monitor.wait_for(lambda ev: want <= l7_of(ev) and any(e["type"] == "drop" and e.get("src_ip") == xwing.ip6 for e in ev))
    finally:
        events = monitor.stop()
    table = "\n".join(f"{s:10} {r:45} expected {e:8} observed {o}" for s, r, e, o in observed)
    assert all(e == o for _, _, e, o in observed), table
    # Envoy kept the client's address on its upstream: the deathstar saw the
    # tiefighter's IPv6 for the landing (the 403 never reached it).
    new = hits(server, tie.ip6)[landed:]
    assert [(h["method"], h["path"]) for h in new] == [LAND], new
    drops = [e for e in events if e["type"] == "drop" and e.get("src_ip") == xwing.ip6]
    assert drops and all(e.get("dst_ip") == ds.ip6 and e.get("dst_port") == 80 for e in drops), drops
