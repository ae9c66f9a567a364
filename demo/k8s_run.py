"""`ciliate demo --k8s`: the star-wars stages through the Kubernetes API path.

The same node as `ciliate demo` (demo/node.py: the real agent, eBPF datapath
and Envoy in network namespaces), but the agent runs in Kubernetes mode
(`--k8s-api-server`, `--node-name`) against kubesim, a simulated API server
(demo/kubesim/, not a real Kubernetes), which this process serves inside
the node's namespace (demo/kube.py). The pods exist as Pod objects on this
node and join through ciliate-cni with only
K8S_POD_NAMESPACE/K8S_POD_NAME, so their labels come from the API; the
policies are applied with `kubectl apply -f examples/starwars/...` and each
stage waits until the object's `status.nodes[<node>]` says enforcing at the
new revision. A last stage deletes the object with kubectl and checks that
access is back. Prints the request / expected / observed table, exits
non-zero on a mismatch, removes everything it made.

Run as `ciliate demo --k8s` or `python -m demo.k8s_run` (root).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from demo.kube import KubeCluster, KubeError, kubectl_binary
from demo.node import NETNS_DIR, Node, NodeError
from demo.scenario import DEATHSTAR_PORT, EXAMPLES, K8S_STAGES, PODS, Request, Stage
from demo.stages import run_stages
from demo.table import print_table

NAMESPACE = "default"
POLICY = "rule1"  # the object both example files name, so stage 3's apply replaces stage 2's
SOURCE = f"k8s:CiliumNetworkPolicy/{NAMESPACE}/{POLICY}"  # how the agent names it in `ciliate policy get`


def wait_withdrawn(node: Node, source: str, after_revision: int, timeout: float = 30.0) -> int:
    """Until the agent enforces a revision newer than `after_revision` without `source`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pols = node.ciliate_json("policy", "get")
        if pols["revision"] > after_revision and not any(p["source"] == source for p in pols["policies"]):
            return int(pols["revision"])
        time.sleep(0.05)
    raise NodeError(f"{source} still in force {timeout:.0f}s after its deletion")


def endpoint_labels(node: Node, endpoint_id: int | None) -> dict[str, str]:
    for ep in node.ciliate_json("endpoint", "list")["endpoints"]:
        if ep["id"] == endpoint_id:
            return dict(ep.get("labels") or {})
    return {}


def run(out: TextIO = sys.stdout, prefix: str = "cilk8sdemo", subnet: str = "10.211.0.0/24") -> int:
    try:
        kubectl_binary()  # before building anything: say at once what is missing
        with Node(prefix=prefix, subnet=subnet) as node, KubeCluster(
            node.workdir / "kube", node_name=f"{prefix}-node", netns=NETNS_DIR / node.host_ns,
        ) as kube:
            print(f"simulated Kubernetes API server (kubesim, in this process: no real cluster) at {kube.url} inside the node's network namespace; node {kube.node_name}", file=out, flush=True)
            print("starting the agent in Kubernetes mode (eBPF datapath + Envoy)...", file=out, flush=True)
            node.start_agent("--k8s-api-server", kube.url, "--node-name", kube.node_name, "--k8s-sync-timeout", "30")
            for pod in PODS:
                kube.create_pod(pod.name, pod.labels, NAMESPACE)
                p = node.add_pod(pod.name, pod.labels, namespace=NAMESPACE)
                got = {k.removeprefix("k8s:"): v for k, v in endpoint_labels(node, p.endpoint_id).items()
                       if k.removeprefix("k8s:") in pod.labels}
                if got != pod.labels:
                    raise NodeError(f"endpoint of {NAMESPACE}/{pod.name} has labels {got}, not the Pod's {pod.labels}")
                print(f"  pod {NAMESPACE}/{p.name:10} {p.ip:15} endpoint {p.endpoint_id}  labels from the Pod {got}", file=out, flush=True)
            node.serve_deathstar(port=DEATHSTAR_PORT)
            deathstar = f"{node.pods['deathstar'].ip}:{DEATHSTAR_PORT}"
            applied: str | None = None  # the example file whose object is in the API

            def apply(stage: Stage) -> None:
                nonlocal applied
                for f in stage.policy_files:
                    before = node.policy_revision()
                    said = kube.kubectl("apply", "-f", str(EXAMPLES / f)).stdout.strip()
                    entry = kube.wait_enforcing(POLICY, after_revision=before, namespace=NAMESPACE)
                    print(f"  kubectl apply -f examples/starwars/{f}: {said}", file=out, flush=True)
                    print(f"  status.nodes[{kube.node_name}]: enforcing, revision {entry['localPolicyRevision']}", file=out, flush=True)
                    applied = f
                if not stage.policy_files and applied is not None:
                    before = node.policy_revision()
                    said = kube.kubectl("delete", "-f", str(EXAMPLES / applied)).stdout.strip()
                    wait_withdrawn(node, SOURCE, before)
                    print(f"  kubectl delete -f examples/starwars/{applied}: {said}", file=out, flush=True)
                    applied = None

            def send(req: Request) -> dict[str, object]:
                return node.request(req.ship, req.method, deathstar, req.path)

            rows = run_stages(K8S_STAGES, out, apply, send)
    except (NodeError, KubeError) as exc:
        print(f"demo failed: {exc}", file=out)
        return 2
    return 1 if print_table(rows, out) else 0


def main() -> int:
    return run()


if __name__ == "__main__":
    sys.exit(main())
