"""The proxy's upstreams never take a 4-tuple the client pod uses itself,
whatever the node's ip_local_port_range.

An upstream of Envoy keeps the client pod's address (original_src). Its
source port used to come from the node's ip_local_port_range; where that
overlapped the pod's own range, an upstream Envoy still held (idle, pooled)
could have the 4-tuple of a connection the pod opened itself once policy
stopped redirecting, and the server saw two connections with one 4-tuple.
Now the datapath assigns those ports from the agent's range
(--proxy-upstream-ports, 61000-65535).

The worst case an operator can set up: the node and the client pod share
one 64-port window, so every port the pod picks is one the kernel would
have picked for an upstream. Eight keep-alive clients make Envoy hold eight
upstreams from the pod's address; the policy then drops its HTTP rules and
the pod opens 256 connections of its own from its window; then the rules
come back and Envoy sends on the upstreams it kept. What a user must see:
every request answered, the server seeing the proxy's connections from the
agent's range and the pod's own from the pod's window. Before the fix, the
pod's handshakes on the kept 4-tuples reset the server's side of those
upstreams, and requests Envoy later sent on them timed out or got 503
(2 + 2 of 32 in the run that checked the test against the old code).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from demo.node import Node
from tests.agent.test_l7_both_sides import EGRESS as L7  # c -> s:80, GET
from tests.reliability.conftest import outcomes, tally, wait_for

WINDOW = (40000, 40063)  # the node's and the client pod's ephemeral ports
AGENT_RANGE = (61000, 65535)  # --proxy-upstream-ports' default
KEEPALIVE_CLIENTS = 8
OWN_CONNECTIONS = 4 * (WINDOW[1] - WINDOW[0] + 1)

HTTP_RULES = "      rules: {http: [{method: GET}]}\n"
L3L4 = L7.replace(HTTP_RULES, "")  # the same c -> s:80 peer, no HTTP rules: not redirected
assert L3L4 != L7


def _port_window(netns: str) -> None:
    # tw_reuse: the pod cycles through its 64 ports faster than TIME_WAIT
    # (60 s) frees them; the kernel reuses one a second after its last
    # segment (hence the pause between requests below).
    subprocess.run(
        ["ip", "netns", "exec", netns, "sysctl", "-q", "-w", f"net.ipv4.ip_local_port_range={WINDOW[0]} {WINDOW[1]}",
         "net.ipv4.tcp_tw_reuse=1"],
        check=True,
    )


def _upstreams(node: Node, client: str) -> set[int]:
    """Source ports of the node's connections from the client's address: the
    proxy's upstreams (the pod's own live in its namespace)."""
    out = subprocess.run(
        ["ip", "netns", "exec", node.host_ns, "ss", "-Htn", "state", "established", "src", client],
        capture_output=True, text=True, check=True,
    ).stdout
    return {int(line.split()[-2].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}


@pytest.mark.privileged
@pytest.mark.envoy
def test_upstreams_take_no_port_the_client_pod_uses_whatever_the_node_range(node: Node, tmp_path: Path) -> None:
    _port_window(node.host_ns)
    node.start_agent()
    node.add_pod("c", {"app": "c"})
    node.add_pod("s", {"app": "s"})
    _port_window(node.pods["c"].netns)
    c_ip, s = node.pods["c"].ip, f"{node.pods['s'].ip}:80"
    seen = node.watch(node.serve_deathstar(pod="s"))
    policy = tmp_path / "c-to-s.yaml"
    policy.write_text(L7)
    node.apply_policy(policy)

    # Redirected: Envoy answers on the pod's connections and opens its own.
    clients = [node.traffic("c", "GET", s, "/v1", interval=0.05, keepalive=True) for _ in range(KEEPALIVE_CLIENTS)]
    wait_for("every keep-alive client answered", lambda: all(len(outcomes(c)) >= 5 for c in clients))
    held = wait_for(
        "Envoy holding its upstreams", lambda: (p := _upstreams(node, c_ip)) and len(p) >= 2 and p, timeout=30,
    )
    redirected = [o for c in clients for o in c.stop() if "seq" in o]
    proxied = {e["port"] for e in seen.snapshot() if e.get("client") == c_ip}
    assert tally(redirected) == {"200": len(redirected)}, tally(redirected)
    assert all(AGENT_RANGE[0] <= p <= AGENT_RANGE[1] for p in proxied | set(held)), sorted(proxied | set(held))

    # Not redirected any more: the pod's own connections reach the server,
    # from its window, while Envoy still holds the upstreams.
    policy.write_text(L3L4)
    node.apply_policy(policy)
    before = len(seen)
    direct = node.traffic("c", "GET", s, "/v1", interval=0.03, timeout=3.0)
    wait_for(f"{OWN_CONNECTIONS} connections of the pod's own", lambda: len(outcomes(direct)) >= OWN_CONNECTIONS, timeout=180)
    still_held = _upstreams(node, c_ip)
    results = outcomes(direct.stop())
    own = {e["port"] for e in seen.snapshot()[before:] if e.get("client") == c_ip}
    assert tally(results) == {"200": len(results)}, tally(results)
    assert own and all(WINDOW[0] <= p <= WINDOW[1] for p in own), sorted(own)
    # The proxy's upstreams were there all along, none in the pod's window.
    assert still_held & set(held), (sorted(held), sorted(still_held))
    assert not any(WINDOW[0] <= p <= WINDOW[1] for p in held | still_held)

    # Redirected again: Envoy sends on the upstreams it kept. Had the pod's
    # own connections taken their 4-tuples, the server would have dropped
    # them (its side reset by the pod's handshake) and these would fail.
    policy.write_text(L7)
    node.apply_policy(policy)
    again = node.traffic("c", "GET", s, "/v1", interval=0.02, timeout=3.0)
    wait_for("requests through the kept upstreams", lambda: len(outcomes(again)) >= 4 * KEEPALIVE_CLIENTS)
    results = outcomes(again.stop())
    assert tally(results) == {"200": len(results)}, tally(results)

    up = node.status()["upstream_ports"]
    assert up["by_datapath"] and up["ports"] == f"{AGENT_RANGE[0]}-{AGENT_RANGE[1]}", up
    assert up["assigned"] >= len(held) and up["exhausted"] == 0, up
