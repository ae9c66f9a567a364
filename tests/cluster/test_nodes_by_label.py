"""fromNodes on a real three-node cluster: each agent publishes its
`--node-label`s through etcd; a policy on node 1's pod admits the nodes
labelled role=frontend. Node 2 (frontend) reaches the pod from its own
network namespace, node 3 (backend) does not (the server never sees it),
and relabelling which nodes the policy names moves them."""

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
        c.nodes[0].add_pod("store", {"app": "store"})
        c.wait_peers(timeout=90)
        yield c


def from_node(node, url: str, timeout: float) -> dict:
    out = subprocess.run(["ip", "netns", "exec", node.host_ns, PY, "-m", "demo.apps", "request", "GET", url,
                          "--timeout", str(timeout)], capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_policy_admits_the_nodes_its_labels_select(cluster: Cluster, tmp_path: Path) -> None:
    home, front, back = cluster.nodes
    server = home.watch(home.serve_deathstar("store", port=80))
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
