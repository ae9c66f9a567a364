"""`ciliate agent` for real: kernel datapath, supervised Envoy, pods joined
through ciliate-cni, the star-wars policies from a watched directory, and
SIGTERM leaving the kernel enforcing. Everything runs in network namespaces
made by demo.node.Node, which removes them even when a test fails."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.node import Node
from demo.scenario import PODS
from tests.monitor_proc import MonitorProc

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "starwars"
LAND = ("POST", "/v1/request-landing")
EXHAUST = ("PUT", "/v1/exhaust-port")


@pytest.fixture
def node() -> Iterator[Node]:
    with Node(prefix="cile2e", subnet="10.202.0.0/24") as n:
        yield n


def outcome(node: Node, ship: str, method: str, path: str) -> str:
    got = node.request(ship, method, f"{node.pods['deathstar'].ip}:80", path)
    return str(got["status"]) if "status" in got else ("dropped" if got.get("error") == "timeout" else str(got))


@pytest.mark.privileged
@pytest.mark.envoy
def test_starwars_through_the_real_agent_and_sigterm_keeps_enforcing(node: Node) -> None:
    agent = node.start_agent()
    for pod in PODS:
        node.add_pod(pod.name, pod.labels)
    eps = node.ciliate_json("endpoint", "list")["endpoints"]
    assert sorted(e["state"] for e in eps) == ["ready"] * 3
    # Its programs are compiled and its flows read, yet the compiler never
    # entered the agent: LLVM would stay in its memory for good.
    maps = Path(f"/proc/{agent.pid}/maps").read_text()
    assert "libLLVM" not in maps and "libbcc" not in maps
    server = node.serve_deathstar()

    observed: list[tuple[str, str, str, str]] = []

    def check(stage: str, ship: str, req: tuple[str, str], expected: str) -> None:
        observed.append((stage, f"{ship} {req[0]} {req[1]}", expected, outcome(node, ship, *req)))

    check("no policy", "tiefighter", LAND, "200")
    check("no policy", "xwing", LAND, "200")
    node.apply_policy(EXAMPLES / "1-l3l4.yaml", name="starwars.yaml")
    check("L3/L4", "tiefighter", LAND, "200")
    check("L3/L4", "xwing", LAND, "dropped")
    node.apply_policy(EXAMPLES / "2-l7.yaml", name="starwars.yaml")
    monitor = MonitorProc(node.socket, "--type", "drop", "--type", "l7")  # subscribed when this returns
    tie, xwing = node.pods["tiefighter"].ip, node.pods["xwing"].ip

    def l7_of(events: list[dict]) -> set:
        return {(e.get("src_ip"), e.get("method"), e.get("path"), e.get("status")) for e in events if e["type"] == "l7"}

    try:
        check("L7", "tiefighter", EXHAUST, "403")
        check("L7", "xwing", LAND, "dropped")
        check("L7", "tiefighter", LAND, "200")
        # Envoy flushes its access log about once a second: wait for what we sent.
        want = {(tie, "PUT", "/v1/exhaust-port", 403), (tie, "POST", "/v1/request-landing", 200)}
        monitor.wait_for(lambda ev: want <= l7_of(ev) and any(e["type"] == "drop" and e.get("src_ip") == xwing for e in ev))
    finally:
        events = monitor.stop()
    l7 = l7_of(events)
    assert (tie, "PUT", "/v1/exhaust-port", 403) in l7, events
    assert (tie, "POST", "/v1/request-landing", 200) in l7, events
    drops = [e for e in events if e["type"] == "drop" and e.get("src_ip") == xwing]
    assert drops and all(e.get("dst_port") == 80 for e in drops), events
    assert any("org=alliance" in ",".join(e.get("src_labels", [])) for e in drops), drops
    ds = node.pods["deathstar"].endpoint_id
    dump = node.ciliate_json("bpf", "policy", "get", str(ds))
    # Every peer goes through the proxy on port 80; the node keeps its
    # allow-localhost entry.
    assert {e["verdict"] for e in dump["entries"] if e["identity"] != 1} == {"redirect"}
    assert [e["verdict"] for e in dump["entries"] if e["identity"] == 1] == ["allow"]
    pol = [p for p in node.ciliate_json("policy", "get")["policies"] if p["source"].endswith("starwars.yaml")]
    assert [(p["state"], p["endpoints"]) for p in pol] == [("enforced", 1)]

    # SIGTERM: the agent goes, the kernel keeps enforcing.
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(30) == 0
    check("agent stopped", "xwing", LAND, "dropped")

    table = "\n".join(f"{s:14} {r:40} expected {e:8} observed {o}" for s, r, e, o in observed)
    assert all(e == o for _, _, e, o in observed), table
    # Requests that were dropped never reached the server.
    server.kill()
    seen = server.stdout.read() if server.stdout else ""
    xwing_hits = [line for line in seen.splitlines() if f'"client": "{node.pods["xwing"].ip}"' in line]
    assert len(xwing_hits) == 1, seen  # only the no-policy request landed


@pytest.mark.privileged
@pytest.mark.envoy
def test_ciliate_demo_command_passes_and_cleans_up() -> None:
    """The README's first command, as a person runs it."""
    out = subprocess.run([sys.executable, "-m", "agent.cli", "demo"], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "12 of 12 requests as expected" in out.stdout  # three of them over IPv6
    assert "tiefighter PUT /v1/exhaust-port         403       403" in out.stdout
    after_ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "cildemo" not in after_ns
    assert not list(Path("/sys/fs/bpf").glob("cildemo-*"))
