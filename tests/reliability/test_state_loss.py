"""`kill -9`, then endpoints.json moved aside (as the agent's own refusal
message for a damaged file suggests), then a restart.

What a user must see: the agent comes back with every pod it had (same ids,
same identities, ready), not healthy-with-zero-endpoints while the pods'
veths and programs are still there; their L7 traffic keeps its verdicts; and
a pod restored this way can still be removed through CNI DEL."""

from __future__ import annotations

import subprocess

import pytest

from agent.cni.config import host_ifname
from tests.reliability.conftest import EXHAUST, LAND, STARWARS, Starwars, build_starwars, wait_for


@pytest.mark.privileged
@pytest.mark.envoy
def test_lost_endpoint_table_is_restored_from_the_datapath(node) -> None:
    sw: Starwars = build_starwars(node, STARWARS / "2-l7.yaml")
    before = sw.endpoints()
    assert {s for _, _, s in before.values()} == {"ready"}, before

    node.kill_agent()
    table = node.state / "endpoints.json"
    table.rename(table.with_name("endpoints.json.aside"))
    node.start_agent()
    wait_for("the pods back and ready", lambda: sw.endpoints() == before, timeout=40)
    assert node.status()["ok"]

    land, exhaust = LAND, EXHAUST
    got = {
        "tiefighter landing": node.request("tiefighter", land[0], sw.dst(), land[1]).get("status"),
        "tiefighter exhaust": node.request("tiefighter", exhaust[0], sw.dst(), exhaust[1]).get("status"),
        "xwing landing": node.request("xwing", land[0], sw.dst(), land[1], timeout=1.0).get("error"),
    }
    assert got == {"tiefighter landing": 200, "tiefighter exhaust": 403, "xwing landing": "timeout"}, got

    # A policy change still reaches the restored endpoints: removing the policy opens the exhaust port.
    node.remove_policy("starwars.yaml")
    wait_for("exhaust open again", lambda: node.request("tiefighter", exhaust[0], sw.dst(), exhaust[1]).get("status") == 200)

    # CNI DEL of a restored pod: its endpoint and its veth go.
    xwing = node.pods["xwing"]
    veth = host_ifname(f"{node.prefix}-{xwing.name}", "eth0")
    assert veth in _links(node)
    node.cni("DEL", xwing)
    wait_for("xwing's endpoint gone", lambda: "xwing" not in sw.endpoints())
    assert veth not in _links(node)


def _links(node) -> str:
    return subprocess.run(["ip", "-n", node.host_ns, "-o", "link"], capture_output=True, text=True).stdout
