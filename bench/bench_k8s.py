"""Kubernetes-path benchmark through the real agent, eBPF datapath and Envoy:
how long from a policy object created in the API server until it is
enforced, beside the same change made through the policy directory, in the
same run on the same agent; and how many API requests one change costs.
A script, not a test; prints tables. Needs root.

The node is bench_e2e.py's (demo.node.Node: the real agent in a host netns,
pods through ciliate-cni), in Kubernetes mode against kubesim served inside
that netns (demo/kube.py): the pods are Pod objects, their labels come from
the API, and POLICIES unrelated CiliumNetworkPolicies (selecting labels no
pod has) sit in the API server for the whole run, so both paths compile
against the same 1,000 policies. One change is a create then a delete of
one star-wars policy object, the same JSON document on both paths:
  - kernel: "empire may open TCP/9000 on the deathstar" appears, so the
    xwing's next new connection is dropped (a prober opens one every 3 ms);
  - L7: "empire may only POST /v1/request-landing on port 80" appears, so
    the tiefighter's next PUT /v1/exhaust-port gets 403 (a request on a new
    connection every 10 ms).
API path: t0 is the create (POST) or DELETE sent to the API server; file
path: t0 is the file's rename into the directory or its unlink. Baseline,
same run: the agent's own regeneration time for the change (the
`ciliate_endpoint_regeneration_time_stats_seconds` sum delta), as in bench_e2e.py.

API requests per change: every request in kubesim's log while a series runs
(the benchmark's own create/delete, the agent's status writes, watch
reconnects, any other read), divided by the number of changes; the file
series shows what the API server sees when nothing changes in it.

Run: .venv/bin/python bench/bench_k8s.py [--changes 100] [--policies 1000] [--only kernel|l7]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_e2e import METRICS_PORT, POLL, SINK_PORT, Prober, pct, regen_seconds_sum  # noqa: E402
from demo.kube import KubeCluster  # noqa: E402
from demo.node import NETNS_DIR, Node  # noqa: E402
from demo.scenario import PODS  # noqa: E402

NAMESPACE = "default"
NAME = "bench-starwars"
CNP = f"/apis/cilium.io/v2/namespaces/{NAMESPACE}/ciliumnetworkpolicies"
FILE = "bench-starwars.yaml"


def starwars(kind: str) -> dict:
    """The object both paths create; JSON is YAML, so the file is this document too."""
    if kind == "kernel":
        rule = {"fromEndpoints": [{"matchLabels": {"org": "empire"}}],
                "toPorts": [{"ports": [{"port": str(SINK_PORT), "protocol": "TCP"}]}]}
    else:
        rule = {"fromEndpoints": [{"matchLabels": {"org": "empire"}}],
                "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}],
                             "rules": {"http": [{"method": "POST", "path": "/v1/request-landing"}]}}]}
    return {
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {"endpointSelector": {"matchLabels": {"org": "empire", "class": "deathstar"}}, "ingress": [rule]},
    }


def unrelated(k: int) -> dict:
    return {
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": f"bench-{k:05d}", "namespace": NAMESPACE},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": f"nobody-{k % 100}"}},
            "ingress": [{"fromEndpoints": [{"matchLabels": {"app": f"nobody-{(k + 1) % 100}"}}],
                         "toPorts": [{"ports": [{"port": str(8000 + k % 1000), "protocol": "TCP"}]}]}],
        },
    }


class FilePath:
    name = "file"

    def __init__(self, node: Node) -> None:
        self.node = node

    def create(self, obj: dict) -> float:
        tmp = self.node.policies / f".{FILE}.tmp"
        tmp.write_text(json.dumps(obj))
        t = time.time()
        os.replace(tmp, self.node.policies / FILE)
        return t

    def delete(self) -> float:
        t = time.time()
        (self.node.policies / FILE).unlink()
        return t


class ApiPath:
    name = "API"

    def __init__(self, kube: KubeCluster) -> None:
        self.kube = kube

    def create(self, obj: dict) -> float:
        t = time.time()
        self.kube.http("POST", CNP, obj)
        return t

    def delete(self) -> float:
        t = time.time()
        self.kube.http("DELETE", f"{CNP}/{NAME}")
        return t


def classify(records) -> Counter:
    out: Counter = Counter()
    for r in records:
        if r.is_watch:
            out["watches"] += 1
        elif r.path.endswith("/status"):
            out["status writes"] += 1
        elif r.path in (CNP, f"{CNP}/{NAME}") and r.method in ("POST", "DELETE"):
            out["change itself"] += 1
        else:
            out["other"] += 1
    return out


def series(node: Node, kube: KubeCluster, path, kind: str, changes: int) -> dict:
    """create -> enforced and delete -> lifted, `changes` times; seconds and API requests."""
    ds = node.pods["deathstar"].ip
    if kind == "kernel":
        probe = Prober(node, "xwing", ["probe", "tcp", ds, str(SINK_PORT)])
        allowed, denied = "open", "dropped"
    else:
        probe = Prober(node, "tiefighter", ["probe", "http", ds, "80", "PUT", "/v1/exhaust-port"])
        allowed, denied = "200", "403"
    probe.wait_for(allowed, 0, timeout=30)
    log_start = len(kube.request_log())
    created, deleted, regen = [], [], []
    for _ in range(changes):
        time.sleep(random.uniform(0, POLL))  # a random phase against the directory's safety-net poll
        before = regen_seconds_sum(node)
        t0 = path.create(starwars(kind))
        created.append(probe.wait_for(denied, t0) - t0)
        time.sleep(0.25)  # the regeneration finishes, the metrics settle
        regen.append(regen_seconds_sum(node)[0] - before[0])
        time.sleep(random.uniform(0, POLL))
        t1 = path.delete()
        deleted.append(probe.wait_for(allowed, t1) - t1)
        time.sleep(0.25)
    time.sleep(1.5)  # the last status write (at most one per object per second) lands inside the window
    requests = classify(kube.request_log()[log_start:])
    probe.lines.stop()
    return {"created": created, "deleted": deleted, "regen": regen, "requests": requests, "changes": 2 * changes}


def wait_quiet(kube: KubeCluster, quiet: float = 3.0, limit: float = 600.0) -> int:
    """Until the agent's start-up status writes (at most 10 per second) are done."""
    deadline = time.monotonic() + limit
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = sum(1 for r in kube.request_log() if r.path.endswith("/status"))
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return n
        time.sleep(0.5)
    return last


def row(what: str, xs: list[float]) -> str:
    return f"  {what:46} {pct(xs, .5) * 1e3:8.1f} {pct(xs, .99) * 1e3:8.1f} {max(xs) * 1e3:8.1f}  (min {min(xs) * 1e3:.1f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=100, help="create+delete cycles per path and kind (default %(default)s)")
    ap.add_argument("--policies", type=int, default=1000, help="unrelated policies in the API server (default %(default)s)")
    ap.add_argument("--only", choices=("kernel", "l7"), help="run one kind only")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_k8s.py needs root: network namespaces, tc and bpf", file=sys.stderr)
        return 2

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds like Ctrl-C: the node's cleanup runs
    with Node(prefix="cilbk8s", subnet="10.213.0.0/24") as node, KubeCluster(
        node.workdir / "kube", node_name="cilbk8s-node", netns=NETNS_DIR / node.host_ns, history_limit=20000,
    ) as kube:
        t = time.monotonic()
        for k in range(a.policies):
            kube.http("POST", CNP, unrelated(k))
        print(f"{a.policies} policies created in the API server in {time.monotonic() - t:.1f} s", flush=True)
        node.start_agent("--k8s-api-server", kube.url, "--node-name", kube.node_name, "--k8s-sync-timeout", "300",
                         "--metrics-port", str(METRICS_PORT), timeout=300)
        for pod in PODS:
            kube.create_pod(pod.name, pod.labels, NAMESPACE)
            node.add_pod(pod.name, pod.labels, namespace=NAMESPACE)
        node.watch(node.serve_deathstar())  # drained: a full pipe would stall the server
        sink = node.watch(node.spawn("deathstar", [sys.executable, str(ROOT / "bench" / "bench_e2e.py"), "sink", str(SINK_PORT)]))
        time.sleep(0.3)
        assert sink.snapshot(), "the TCP sink did not start"
        t = time.monotonic()
        writes = wait_quiet(kube)
        print(f"the agent wrote {writes} start-up status entries ({time.monotonic() - t:.0f} s to settle)", flush=True)
        n_pol = len(node.ciliate_json("policy", "get")["policies"])

        results = []
        for kind in ("kernel", "l7"):
            if a.only in (None, kind):
                for path in (FilePath(node), ApiPath(kube)):
                    print(f"  {kind} via {path.name}: {a.changes} create+delete cycles...", flush=True)
                    results.append((kind, path.name, series(node, kube, path, kind, a.changes)))

    print(f"\npolicy change -> enforcement: API object vs policy file, same agent and run"
          f" ({n_pol} policies in force, {a.changes} create+delete cycles each, 3 pods)")
    print(f"  {'':46} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for kind, path, r in results:
        verb = ("object created" if path == "API" else "file written")
        undo = ("object deleted" if path == "API" else "file removed")
        if kind == "kernel":
            print(row(f"kernel: {verb} -> next conn dropped", r["created"]))
            print(row(f"  {undo} -> next conn open", r["deleted"]))
        else:
            print(row(f"L7: {verb} -> next request 403", r["created"]))
            print(row(f"  {undo} -> next request 200", r["deleted"]))
        print(row("  baseline: agent regeneration (metrics)", r["regen"]))

    print("\nAPI requests per policy change (kubesim's request log over each series; a change is one create or one delete)")
    cols = ("change itself", "status writes", "watches", "other")
    print(f"  {'series':16} {'changes':>8} {'total/change':>13} " + " ".join(f"{c:>14}" for c in cols))
    for kind, path, r in results:
        req, n = r["requests"], r["changes"]
        print(f"  {kind + ' via ' + path:16} {n:8d} {sum(req.values()) / n:13.2f} " + " ".join(f"{req[c] / n:14.2f}" for c in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
