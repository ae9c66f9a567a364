"""Policy audit mode on real traffic (agent, kernel datapath, Envoy, pods of
the star-wars demo). With the deathstar audited, the xwing's landing that the
L3/L4 policy drops reaches the server and `ciliate monitor` shows it as AUDIT;
switched off, the next connection is dropped at once. Under the L7 policy an
audited deathstar answers the tiefighter's PUT /v1/exhaust-port (the upstream's
200 and body) and the would-be 403 is logged as AUDIT; switched off, 403.
Nothing is restarted in between."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.node import Node
from tests.monitor_proc import MonitorProc

ROOT = Path(__file__).resolve().parents[2]
STARWARS = ROOT / "examples" / "starwars"

pytestmark = [pytest.mark.privileged, pytest.mark.envoy]


@pytest.fixture
def node() -> Iterator[Node]:
    with Node(prefix="cilaud", subnet="10.209.0.0/24") as n:
        yield n


class Monitor:
    """`ciliate monitor -o json` from now until stop()."""

    def __init__(self, node: Node, *args: str) -> None:
        self.proc = MonitorProc(node.socket, *args)  # subscribed when this returns

    def stop(self, want: str | None = None, timeout: float = 30.0) -> list[dict]:
        """Stop once an event whose path is `want` arrived (Envoy flushes its
        access log about once a second), or after a short settle without one."""
        if want:
            self.proc.wait_for(lambda ev: any(e.get("path") == want for e in ev), timeout)
        else:
            self.proc.wait_for(lambda ev: False, 0.5)
        return self.proc.stop()


def _audit(node: Node, pod: str, on: bool) -> None:
    eid = node.pods[pod].endpoint_id
    ep = node.ciliate_json("endpoint", "config", str(eid), f"policy-audit-mode={str(on).lower()}")
    assert ep["audited"] is on, ep


def test_audit_mode_lets_denied_traffic_through_reports_it_and_switches_off_at_once(node: Node) -> None:
    node.start_agent()
    node.add_pod("deathstar", {"org": "empire", "class": "deathstar"})
    node.add_pod("xwing", {"org": "alliance", "class": "xwing"})
    node.add_pod("tiefighter", {"org": "empire", "class": "tiefighter"})
    node.serve_deathstar()
    ds, xwing = node.pods["deathstar"].ip, node.pods["xwing"].ip

    node.apply_policy(STARWARS / "1-l3l4.yaml")
    assert "error" in node.request("xwing", "POST", ds, "/v1/request-landing")

    # L3/L4: the kernel lets the xwing land and says AUDIT.
    _audit(node, "deathstar", True)
    mon = Monitor(node, "--verdict", "audit")
    landed = node.request("xwing", "POST", ds, "/v1/request-landing")
    events = mon.stop()
    assert landed.get("status") == 200 and "Ship landed" in landed.get("body", ""), landed
    kernel = [e for e in events if e["type"] == "audit" and e.get("src_ip") == xwing and e.get("dst_port") == 80]
    assert kernel and kernel[0]["verdict"] == "audit" and kernel[0]["reason"] == "no-policy-match", events
    assert kernel[0].get("direction") == "ingress", kernel

    _audit(node, "deathstar", False)
    assert "error" in node.request("xwing", "POST", ds, "/v1/request-landing"), "audit off: the next connection is dropped"

    # L7: Envoy lets the request through to the deathstar and logs the would-be 403.
    node.apply_policy(STARWARS / "2-l7.yaml", name="1-l3l4.yaml")
    assert node.request("tiefighter", "PUT", ds, "/v1/exhaust-port").get("status") == 403
    _audit(node, "deathstar", True)
    mon = Monitor(node, "--type", "l7")
    boom = node.request("tiefighter", "PUT", ds, "/v1/exhaust-port")
    ok = node.request("tiefighter", "POST", ds, "/v1/request-landing")
    events = mon.stop(want="/v1/request-landing")
    assert boom.get("status") == 200 and "Panic: deathstar exploded" in boom.get("body", ""), boom
    assert ok.get("status") == 200, ok
    by_path = {e.get("path"): e for e in events}
    assert by_path.get("/v1/exhaust-port", {}).get("verdict") == "audit", events
    assert by_path.get("/v1/request-landing", {}).get("verdict") == "forwarded", events

    _audit(node, "deathstar", False)
    assert node.request("tiefighter", "PUT", ds, "/v1/exhaust-port").get("status") == 403
