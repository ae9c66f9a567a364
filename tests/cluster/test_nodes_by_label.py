"""fromNodes on a real three-node cluster: each agent publishes its
`--node-label`s through etcd; a policy on node 1's pod admits the nodes
labelled role=frontend. Node 2 (frontend) reaches the pod from its own
network namespace, node 3 (backend) does not (the server never sees it),
and relabelling which nodes the policy names moves them.

Named ports across nodes ride the same etcd records: node 2's egress rule
`port: http` towards node 1's pod admits the port that pod serves under the
name (published with its address), and no other."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.cluster import Cluster
from demo.node import PY

pytestmark = [pytest.mark.privileged, pytest.mark.etcd]

ROLES = {1: "db", 2: "frontend", 3: "backend"}
POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: from-{role}, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{app: store}}}}
  ingress:
  - fromNodes: [{{matchLabels: {{role: {role}}}}}]
    toPorts: [{{ports: [{{port: "80", protocol: TCP}}]}}]
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(nodes=3, prefix="cilnl", lease_ttl=15.0) as c:
        for i in (1, 2, 3):
            c.nodes[i - 1].start_agent(*c.agent_args(i), "--node-label", f"role={ROLES[i]}")
        home = c.nodes[0]
        home.add_pod("store", {"app": "store"}, named_ports=[{"name": "http", "port": 80, "protocol": "TCP"}])
        c.nodes[1].add_pod("shopper", {"app": "shopper"})
        c.store_server = home.watch(home.serve_deathstar("store", port=80))  # type: ignore[attr-defined]
        c.wait_peers(timeout=90)
        yield c


def from_node(node, url: str, timeout: float) -> dict:
    out = subprocess.run(["ip", "netns", "exec", node.host_ns, PY, "-m", "demo.apps", "request", "GET", url,
                          "--timeout", str(timeout)], capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_policy_admits_the_nodes_its_labels_select(cluster: Cluster, tmp_path: Path) -> None:
    home, front, back = cluster.nodes
    server = cluster.store_server  # type: ignore[attr-defined]
    url = f"http://{home.pods['store'].ip}:80/v1/"
    for policy_role, allowed, denied in (("frontend", front, back), ("backend", back, front)):
        f = tmp_path / "p.yaml"
        f.write_text(POLICY.format(role=policy_role))
        for name in list(home.policies.glob("*.yaml")):
            home.remove_policy(name.name)
        home.apply_policy(f, name=f"from-{policy_role}.yaml")
        deadline = time.monotonic() + 60  # a hang guard: the labels travel through etcd once
        while "status" not in from_node(allowed, url, 1.0):
            assert time.monotonic() < deadline, f"node labelled {policy_role} never got through"
        seen = len(server.snapshot())
        assert from_node(denied, url, 1.0).get("error") == "timeout", f"a node not labelled {policy_role} got through"
        assert len(server.snapshot()) == seen, "the server saw a request the policy does not admit"


SHOPPER_EGRESS = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: shopper, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: shopper}}
  egress:
  - toEndpoints: [{matchLabels: {app: store}}]
    toPorts: [{ports: [{port: http}]}]
"""


def test_an_egress_named_port_resolves_against_a_pod_on_another_node(cluster: Cluster, tmp_path: Path) -> None:
    home, away = cluster.nodes[0], cluster.nodes[1]
    # The store serves :80 (the fixture's server) as http, and :8080 under no name.
    other = home.watch(home.serve_deathstar("store", port=8080))
    store = home.pods["store"].ip
    for name in list(home.policies.glob("*.yaml")):  # the store's ingress is open again
        home.remove_policy(name.name)
    f = tmp_path / "shopper.yaml"
    f.write_text(SHOPPER_EGRESS)
    away.apply_policy(f)
    deadline = time.monotonic() + 60  # a hang guard: the store's named port travels through etcd once
    while "status" not in away.request("shopper", "GET", f"{store}:80", "/", timeout=1.0):
        assert time.monotonic() < deadline, "the store's http port was never admitted"
    seen = len(other.snapshot())
    assert away.request("shopper", "GET", f"{store}:8080", "/", timeout=1.0).get("error") == "timeout"
    assert len(other.snapshot()) == seen, "a port the store does not serve as http was admitted"
