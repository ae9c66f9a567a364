"""A server behind an L7 policy sees the client pod, not the node.

Real agent, kernel datapath, Envoy and pods (demo.node.Node). Pod c sends
HTTP to pod s, whose server logs the peer address of every request. Envoy's
upstream connection keeps c's address (the original_src listener filter) and
the datapath hands s's replies back to Envoy's socket; s's ingress L3/L4
policy still judges c's identity on that upstream hop.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.node import Node
from tests.agent.test_l7_both_sides import EGRESS as EGRESS_L7  # the same c -> s GET policy
from tests.monitor_proc import MonitorProc
from tests.reliability.conftest import sample

INGRESS_L7 = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: s-ingress}
spec:
  endpointSelector: {matchLabels: {app: s}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: c}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET, path: "%s"}]}
"""


@pytest.fixture
def node() -> Iterator[Node]:
    with Node(prefix="cilos", subnet="10.209.0.0/24") as n:
        yield n


def _write(tmp: Path, name: str, text: str) -> Path:
    f = tmp / name
    f.write_text(text)
    return f


def _get(node: Node, path: str) -> str:
    got = node.request("c", "GET", f"{node.pods['s'].ip}:80", path)
    return str(got.get("status", got.get("error")))


def _clients(seen: list[dict], since: int) -> set[str]:
    return {e["client"] for e in seen[since:] if "client" in e}


@pytest.mark.privileged
@pytest.mark.envoy
def test_server_sees_the_client_address_through_ingress_and_egress_proxies(node: Node, tmp_path: Path) -> None:
    node.start_agent()
    node.add_pod("c", {"app": "c"})
    node.add_pod("s", {"app": "s"})
    c_ip = node.pods["c"].ip
    seen = node.watch(node.serve_deathstar(pod="s"))
    rows: list[tuple[str, str, set[str]]] = []

    def check(stage: str, path: str = "/v1") -> None:
        before = len(seen)
        status = _get(node, path)
        deadline = time.monotonic() + 3
        while len(seen) == before and time.monotonic() < deadline and status == "200":
            time.sleep(0.02)
        rows.append((stage, status, _clients(seen.snapshot(), before)))

    check("no policy")
    ingress = _write(tmp_path, "s-ingress.yaml", INGRESS_L7 % "/v1")
    node.apply_policy(ingress)
    monitor = MonitorProc(node.socket, "--type", "forward")  # subscribed when this returns
    s_ip = node.pods["s"].ip
    try:
        check("ingress L7")
        monitor.wait_for(lambda ev: any(e.get("dst_ip") == s_ip and e.get("dst_port") == 80 for e in ev))
    finally:
        events = monitor.stop()
    check("ingress L7, 403", "/private")
    egress = _write(tmp_path, "c-egress.yaml", EGRESS_L7)
    node.apply_policy(egress)
    check("both L7")
    node.remove_policy(ingress.name)
    check("egress L7")

    table = "\n".join(f"{s:18} {st:8} {sorted(c)}" for s, st, c in rows)
    assert [(s, st) for s, st, _ in rows] == [
        ("no policy", "200"), ("ingress L7", "200"), ("ingress L7, 403", "403"), ("both L7", "200"), ("egress L7", "200"),
    ], table
    assert all(c == {c_ip} for s, st, c in rows if st == "200"), table

    # The proxied upstream is a forward from c's identity, not reserved:host.
    to_s = [e for e in events if e.get("dst_ip") == node.pods["s"].ip and e.get("dst_port") == 80]
    assert to_s, events
    assert all(e.get("src_ip") == c_ip for e in to_s), to_s
    assert not [e for e in to_s if any("reserved:host" in lbl for lbl in e.get("src_labels", []))], to_s
    assert any("app=c" in ",".join(e.get("src_labels", [])) for e in to_s), to_s


@pytest.mark.privileged
@pytest.mark.envoy
@pytest.mark.parametrize("direction", ["ingress", "egress"])
def test_keepalive_connection_keeps_the_client_address_across_a_policy_change(
    node: Node, tmp_path: Path, direction: str
) -> None:
    node.start_agent()
    node.add_pod("c", {"app": "c"})
    node.add_pod("s", {"app": "s"})
    c_ip = node.pods["c"].ip
    seen = node.watch(node.serve_deathstar(pod="s"))
    first = _write(tmp_path, "l7.yaml", INGRESS_L7 % "/v1" if direction == "ingress" else EGRESS_L7)
    node.apply_policy(first)
    traffic = node.traffic("c", "GET", f"{node.pods['s'].ip}:80", "/v1", interval=0.05, keepalive=True)
    sample("on the keep-alive connection", (traffic,))
    # A change of the HTTP rules (an RDS update: open connections stay).
    second = _write(tmp_path, "l7-2.yaml", INGRESS_L7 % "/v(1|2)" if direction == "ingress" else EGRESS_L7.replace("GET", "GET|HEAD"))
    node.apply_policy(second, name="l7.yaml")
    sample("after the change", (traffic,))
    lines = traffic.stop()
    outcomes = [ln for ln in lines if "seq" in ln]
    assert outcomes and all(ln.get("status") == 200 for ln in outcomes), outcomes[-5:]
    assert outcomes[-1]["conn"] == 1, "the keep-alive connection was not reused"
    clients = [e["client"] for e in seen.snapshot() if "client" in e]
    assert len(clients) >= len(outcomes) - 1 and set(clients) == {c_ip}, sorted(set(clients))
