"""Kubernetes mode for real: the agent (kernel datapath, supervised Envoy) in a
demo.node.Node reads its policies and pod labels from kubesim, served inside
the node's network namespace (demo/kube.py); the star-wars policies are
applied and deleted with kubectl. Enforced in the kernel (the xwing's
request never reaches the server) and by Envoy (the exhaust port gets 403),
`status.nodes[<node>]` says enforcing, deletion restores access. And
`ciliate demo --k8s` as a person runs it. Privileged: the lead runs these."""

from __future__ import annotations

import json
import time
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.k8s_run import wait_withdrawn
from demo.kube import KubeCluster
from demo.node import NETNS_DIR, Node
from demo.scenario import PODS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "starwars"
LAND = ("POST", "/v1/request-landing")
EXHAUST = ("PUT", "/v1/exhaust-port")
SOURCE = "k8s:CiliumNetworkPolicy/default/rule1"


@pytest.fixture
def k8s_node() -> Iterator[tuple[Node, KubeCluster]]:
    with Node(prefix="cilk8se2e", subnet="10.212.0.0/24") as node, KubeCluster(
        node.workdir / "kube", node_name="cilk8se2e-node", netns=NETNS_DIR / node.host_ns,
    ) as kube:
        yield node, kube


def outcome(node: Node, ship: str, method: str, path: str) -> tuple[str, str]:
    got = node.request(ship, method, f"{node.pods['deathstar'].ip}:80", path)
    if "status" in got:
        return str(got["status"]), str(got.get("body", ""))
    return ("dropped" if got.get("error") == "timeout" else str(got)), ""


@pytest.mark.privileged
@pytest.mark.envoy
def test_starwars_policies_through_kubectl_are_enforced_in_the_kernel_and_envoy(k8s_node) -> None:
    node, kube = k8s_node
    node.start_agent("--k8s-api-server", kube.url, "--node-name", kube.node_name, "--k8s-sync-timeout", "30")
    status = node.status()
    assert status["kubernetes"]["node"] == kube.node_name, status
    for pod in PODS:
        kube.create_pod(pod.name, pod.labels)
        node.add_pod(pod.name, pod.labels, namespace="default")
    eps = {e["id"]: e for e in node.ciliate_json("endpoint", "list")["endpoints"]}
    for pod in PODS:
        ep = eps[node.pods[pod.name].endpoint_id]
        assert ep["state"] == "ready" and ep["name"] == f"default/{pod.name}"
        assert {k: ep["labels"].get(f"k8s:{k}") for k in pod.labels} == pod.labels  # from the Pod, not from CNI
    server = node.watch(node.serve_deathstar())
    xwing_ip = node.pods["xwing"].ip

    def xwing_hits() -> int:
        return sum(1 for line in server.snapshot() if line.get("client") == xwing_ip)

    def exhaust_hits() -> int:
        return sum(1 for line in server.snapshot() if line.get("path") == EXHAUST[1])

    assert outcome(node, "xwing", *LAND)[0] == "200"
    assert xwing_hits() == 1

    before = node.policy_revision()
    kube.kubectl("apply", "-f", str(EXAMPLES / "1-l3l4.yaml"))
    entry = kube.wait_enforcing("rule1", after_revision=before)
    assert entry["ok"] is True and entry["observedGeneration"] == 1
    assert outcome(node, "tiefighter", *LAND)[0] == "200"
    assert outcome(node, "xwing", *LAND)[0] == "dropped"
    assert xwing_hits() == 1  # dropped in the kernel: the request never reached the server
    assert outcome(node, "tiefighter", *EXHAUST)[0] == "200"

    before = node.policy_revision()
    kube.kubectl("apply", "-f", str(EXAMPLES / "2-l7.yaml"))
    kube.wait_enforcing("rule1", after_revision=before)
    reached = exhaust_hits()
    assert outcome(node, "tiefighter", *EXHAUST) == ("403", "Access denied")  # Envoy's answer
    assert outcome(node, "tiefighter", *LAND)[0] == "200"
    assert outcome(node, "xwing", *LAND)[0] == "dropped"
    assert xwing_hits() == 1
    assert exhaust_hits() == reached  # the 403 came from Envoy, not the server

    ds = node.pods["deathstar"].endpoint_id
    assert {e["verdict"] for e in node.ciliate_json("bpf", "policy", "get", str(ds))["entries"] if e["identity"] != 1} == {"redirect"}
    pol = [p for p in node.ciliate_json("policy", "get")["policies"] if p["source"] == SOURCE]
    assert [(p["state"], p["endpoints"]) for p in pol] == [("enforced", 1)]
    got = json.loads(kube.kubectl("get", "cnp", "rule1", "-o", "json").stdout)
    mine = got["status"]["nodes"][kube.node_name]
    assert mine["enforcing"] is True and mine["ok"] is True and mine["observedGeneration"] == 2, mine

    before = node.policy_revision()
    kube.kubectl("delete", "-f", str(EXAMPLES / "2-l7.yaml"))
    wait_withdrawn(node, SOURCE, before)
    assert outcome(node, "xwing", *LAND)[0] == "200"
    assert outcome(node, "tiefighter", *EXHAUST)[0] == "200"
    assert xwing_hits() == 2


@pytest.mark.privileged
@pytest.mark.envoy
def test_ciliate_demo_k8s_passes_and_cleans_up() -> None:
    out = subprocess.run([sys.executable, "-m", "agent.cli", "demo", "--k8s"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "11 of 11 requests as expected" in out.stdout
    assert "tiefighter PUT /v1/exhaust-port         403       403       Access denied" in out.stdout
    assert "status.nodes[cilk8sdemo-node]: enforcing" in out.stdout
    after_ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "cilk8sdemo" not in after_ns
    assert not list(Path("/sys/fs/bpf").glob("cilk8sdemo-*"))
    leftover = subprocess.run(["pgrep", "-f", "cilk8sdemo-"], capture_output=True, text=True).stdout.split()
    assert leftover == []


NAMED_PORT_NP = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: http}]
"""


@pytest.mark.privileged
def test_a_network_policy_on_a_named_port_admits_the_port_the_pod_serves_under_that_name(k8s_node) -> None:
    """Kubernetes' own idiom, `port: http`: the web Pod serves http on 8080
    (its container port), so 8080 is admitted and 8081 is not, in the kernel."""
    node, kube = k8s_node
    node.start_agent("--k8s-api-server", kube.url, "--node-name", kube.node_name, "--k8s-sync-timeout", "30")
    kube.create_pod("web", {"app": "web"}, ports=[{"name": "http", "containerPort": 8080, "protocol": "TCP"}])
    kube.create_pod("client", {"app": "client"})
    node.add_pod("web", {"app": "web"}, namespace="default")
    node.add_pod("client", {"app": "client"}, namespace="default")
    ep = next(e for e in node.ciliate_json("endpoint", "list")["endpoints"] if e["name"] == "default/web")
    assert ep["named_ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]  # from the Pod, not from CNI
    servers = {port: node.watch(node.serve_deathstar("web", port=port)) for port in (8080, 8081)}
    web = node.pods["web"].ip
    assert node.request("client", *LAND[:1], f"{web}:8081", LAND[1]).get("status") == 200

    before = node.policy_revision()
    kube.kubectl("apply", "-f", "-", stdin=NAMED_PORT_NP)
    deadline = time.monotonic() + 60  # a hang guard: returns as soon as the policy is in force
    while not any(p["source"] == "k8s:NetworkPolicy/default/web" and p["state"] == "enforced"
                  for p in node.ciliate_json("policy", "get")["policies"]) or node.policy_revision() <= before:
        assert time.monotonic() < deadline, node.ciliate_json("policy", "get")
        time.sleep(0.05)
    seen_8081 = len(servers[8081].snapshot())
    assert node.request("client", *LAND[:1], f"{web}:8080", LAND[1]).get("status") == 200
    assert node.request("client", *LAND[:1], f"{web}:8081", LAND[1], timeout=1.0).get("error") == "timeout"
    assert len(servers[8081].snapshot()) == seen_8081  # dropped in the kernel: the server never saw it
