"""Host policies on a node of a real cluster: the agent (`--host-device eth-u
--host-device x-outside`) enforces a CiliumClusterwideNetworkPolicy with
nodeSelector on the node's own traffic, on its underlay device (where its
etcd connection runs) and on a link to an outside host, and never cuts
itself off: its etcd connection survives the policy, and so does its
reconnect after etcd restarts (a new connection the policy does not name:
the agent keeps its kvstore reachable). Drops are shown from the servers'
side: nothing arrived."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.cluster import Cluster
from demo.node import PY, Lines
from tests.reliability.conftest import wait_for

pytestmark = [pytest.mark.privileged, pytest.mark.etcd]

OUTSIDE, OUTSIDE_GW = "10.252.0.2", "10.252.0.1"
HOST_POLICY = """
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: worker-nodes}
spec:
  nodeSelector: {matchLabels: {role: worker}}
  ingress:
  - fromEntities: [cluster]
  - fromEntities: [world]
    toPorts: [{ports: [{port: "2222", protocol: TCP}]}]
  egress:
  - toEntities: [cluster]
"""


class HostNode:
    def __init__(self, cluster: Cluster, tmp: Path) -> None:
        self.cluster = cluster
        self.node = cluster.nodes[0]
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []

    def serve(self, netns: str, port: int) -> Lines:
        proc = subprocess.Popen(["ip", "netns", "exec", netns, PY, "-m", "demo.apps", "server", "--port", str(port)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.procs.append(proc)
        line = proc.stdout.readline() if proc.stdout else ""
        assert "listening" in line, line
        return Lines(proc)

    def reached(self, netns: str, url: str, timeout: float = 2.0) -> bool:
        """Whether an HTTP request got any answer (the demo server answers
        404 to a path it does not serve: it still got the request)."""
        return "status" in self.request(netns, url, timeout)

    def request(self, netns: str, url: str, timeout: float = 2.0) -> dict:
        out = subprocess.run(["ip", "netns", "exec", netns, PY, "-m", "demo.apps", "request", "GET", url, "--timeout", str(timeout)],
                             capture_output=True, text=True, timeout=60)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def host_node(tmp_path_factory) -> Iterator[HostNode]:
    with Cluster(nodes=1, prefix="cilhf", lease_ttl=15.0) as cluster:
        node = cluster.nodes[0]
        node.add_host("outside", OUTSIDE, OUTSIDE_GW)
        node.start_agent(*cluster.agent_args(1), "--host-device", "eth-u", "--host-device", "x-outside",
                         "--node-label", "role=worker")
        hn = HostNode(cluster, tmp_path_factory.mktemp("hostfw"))
        try:
            yield hn
        finally:
            hn.close()
            print(f"--- agent log (tail)\n{node.agent_tail(4000)}")


def test_a_host_policy_judges_the_nodes_own_traffic_on_its_devices_and_the_agent_keeps_its_etcd(host_node: HostNode) -> None:
    node, cluster = host_node.node, host_node.cluster
    outside = node.pods["outside"].netns
    node_addr = OUTSIDE_GW  # the node's address on the outside link
    ssh_like = host_node.serve(node.host_ns, 2222)
    other = host_node.serve(node.host_ns, 2223)
    out_srv = host_node.serve(outside, 8080)
    # Before any host policy everything passes, both ways.
    assert host_node.reached(outside, f"http://{node_addr}:2223/")
    assert host_node.reached(node.host_ns, f"http://{OUTSIDE}:8080/")
    assert node.status()["kvstore"]["ok"] is True

    policy = host_node.tmp / "host.yaml"
    policy.write_text(HOST_POLICY)
    node.apply_policy(policy)
    got = {p["name"]: p for p in node.ciliate_json("policy", "get")["policies"]}
    assert got["worker-nodes"]["state"] == "enforced", got
    fw = node.status()["host_firewall"]
    assert (fw["ingress_enforced"], fw["egress_enforced"], fw["audit"]) == (True, True, False), fw
    assert fw["devices"] == ["eth-u", "x-outside"] and fw["policies"] == ["worker-nodes"], fw
    assert "10.250.0.254:2379" in fw["always_reach"], fw
    assert "Host firewall:   endpoint 65535, ingress and egress enforced" in node.ciliate("status").stdout

    assert host_node.reached(outside, f"http://{node_addr}:2222/")
    seen = len(other.snapshot())
    assert host_node.request(outside, f"http://{node_addr}:2223/", timeout=1.0).get("error") == "timeout"
    assert len(other.snapshot()) == seen, "a port the host policy does not admit reached the node"
    served = len(out_srv.snapshot())
    assert host_node.request(node.host_ns, f"http://{OUTSIDE}:8080/", timeout=1.0).get("error") == "timeout"
    assert len(out_srv.snapshot()) == served, "the node reached the world its egress policy does not admit"
    assert len(ssh_like.snapshot()) >= 1

    # The agent's own etcd connection (established before the policy) still
    # carries; after etcd restarts, its new connection gets through too.
    assert node.status()["kvstore"]["ok"] is True
    cluster.etcd.stop()
    try:
        wait_for("the agent to notice etcd is gone", lambda: not node.status()["kvstore"]["ok"], timeout=30)
    finally:
        cluster.etcd.start()
    wait_for("the agent to reach etcd again through its host policy", lambda: node.status()["kvstore"]["ok"], timeout=60)
