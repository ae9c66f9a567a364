"""The rollout workflow on real traffic (agent, kernel, Envoy, the star-wars
pods): observe under policy audit mode, `ciliate policy suggest`, enforce the
suggestion; the traffic it saw still passes, a request and a connection it
did not see are refused (403, dropped)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.node import Node

ROOT = Path(__file__).resolve().parents[2]
STARWARS = ROOT / "examples" / "starwars"

pytestmark = [pytest.mark.privileged, pytest.mark.envoy]


@pytest.fixture
def node() -> Iterator[Node]:
    with Node(prefix="cilsug", subnet="10.220.0.0/24") as n:
        yield n


def test_observe_suggest_enforce(node: Node, tmp_path: Path) -> None:
    node.start_agent("--policy-audit-mode")
    node.add_pod("deathstar", {"org": "empire", "class": "deathstar"})
    node.add_pod("tiefighter", {"org": "empire", "class": "tiefighter"})
    node.add_pod("xwing", {"org": "alliance", "class": "xwing"})
    node.serve_deathstar("deathstar")
    ds = node.pods["deathstar"].ip
    # Stage 2 in audit mode gives HTTP visibility on port 80 and enforces nothing.
    node.apply_policy(STARWARS / "2-l7.yaml")
    for _ in range(3):
        assert node.request("tiefighter", "POST", ds, "/v1/request-landing").get("status") == 200
    deadline = time.monotonic() + 30
    while not any(e["type"] == "l7" and e.get("path") == "/v1/request-landing"
                  for e in node.api_get("/v1/flows/history")["events"]):
        assert time.monotonic() < deadline, "Envoy's access log never reached the flow history"
        time.sleep(0.2)

    out = tmp_path / "suggested"
    got = node.ciliate("policy", "suggest", "--out", str(out))
    assert got.returncode == 0, got.stderr
    assert "suggested-deathstar" in got.stderr and "ingress" in got.stderr
    files = sorted(out.glob("*.yaml"))
    assert files
    valid = subprocess.run([sys.executable, "-m", "agent.cli", "policy", "validate", str(out)], capture_output=True, text=True)
    assert valid.returncode == 0, valid.stdout + valid.stderr

    node.remove_policy("2-l7.yaml")
    for f in files:
        node.apply_policy(f)
    for pod in ("deathstar", "tiefighter", "xwing"):
        eid = node.pods[pod].endpoint_id
        assert node.ciliate_json("endpoint", "config", str(eid), "policy-audit-mode=false")["audited"] is False

    assert node.request("tiefighter", "POST", ds, "/v1/request-landing").get("status") == 200, "what was seen passes"
    assert node.request("tiefighter", "PUT", ds, "/v1/exhaust-port").get("status") == 403, "a request not seen: 403"
    assert "error" in node.request("xwing", "POST", ds, "/v1/request-landing"), "a connection not seen: dropped"
