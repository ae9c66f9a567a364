"""Cluster-scale benchmark: one real agent ("node B") following a large
simulated cluster through a real etcd, with no kernel and no Envoy.

What runs (every part a process of its own, so each one's RSS and CPU are its own):
  - etcd: Debian's /usr/bin/etcd (3.4), started by demo/etcd_process.py:
    single member on 127.0.0.1 with free ports and a private data directory
    under one temporary root; killed and the root removed on exit, also on
    an error, Ctrl-C or SIGTERM (and it gets SIGKILL from the kernel if this
    script dies: setpriv --pdeathsig).
  - a load generator: N simulated nodes x M pods written straight into etcd
    with kvstore's own key layout and encoders (kvstore/layout.py), so the
    agent under test takes them as real peers. Each simulated node has its
    own lease, a node record, M endpoint records (ip/v1/<ip>) and one
    identity reference per label set it runs (refs/<id>/<node>), all under
    its lease. Label sets are one per (namespace, app), 20 apps a
    namespace, about --pods-per-identity pods each (the replicas of a set
    sit on different nodes), created with the allocator's own create
    transaction ([version(id/N)==0, version(labels/L)==0] -> put both),
    batched. Later pod adds go through kvstore.identities.allocate() itself
    (get labels/L, then the hold or create transaction), as a node's agent
    would. Background churn: one pod event per 1/--churn s on the nodes that
    take no measured adds, alternating delete of a random pod and add of a
    pod of a label set that node already references (one key write each).
  - node B: a real Agent (agent.daemon.build_agent) with the real policy
    loader and compiler, a KvstoreState (kvstore.Cluster with its default
    lease/GC/timeouts) as shared state, a no-op routing, and the
    NullDatapath/NullProxy of bench_agent.py. Its policy directory holds 22
    policies that select remote pods' labels (per namespace ns0..ns9:
    app0 <- app1 on 8080, app2 <- the whole namespace on 9090; an L7 rule
    app0 <- app3 GET /v1/.* on 80; a clusterwide app2 <- app in {app4,app5}
    on 5432), and it runs 20 local pods those policies select, so remote
    identities cost selector and policy work, as in production.
  - baseline, same run: a single-node agent (no kvstore) with the same
    policies and local pods.
  - identity allocation: kvstore.Cluster instances on a fresh etcd.

Figures:
  - remote pod add -> B's compiled ipcache: t0 is taken by the load
    generator just before its first etcd call for the pod (the identity
    allocation when the node does not hold the label set's reference yet,
    else the ip put); t1 is when B's regenerator has published a state
    whose ipcache holds the /32 (a wrapper on Regenerator.on_report, called
    right after `last_state` is set). Both are CLOCK_MONOTONIC, shared by
    the processes. Open loop: --add-rate adds a second (gaps uniform in
    0.5..1.5 x the mean), whatever B's latency, so every N gets the same
    load and window; 1 in 4 with a new identity (a label set plus a new
    "version" label), while the churn runs. "etcd writes" is the load
    generator's own share (t0 -> its last write acknowledged).
  - local pod add -> own ipcache: Agent.create_endpoint (the CNI path) ->
    the same ipcache probe, for B (after the churn stopped) and for the
    single-node baseline; B's includes publishing the endpoint to etcd,
    which the regenerator does before it records the state.
  - memory: VmRSS from /proc/self/status of the agent's process (the agent
    runs in-process; etcd and the load generator are other processes),
    before agent start -> after the initial sync -> after the churn. Not
    tracemalloc: tracing would slow the agent several times and distort the
    latencies measured in the same run. "per remote pod" = delta / (N x M).
  - CPU: user+system seconds of the agent's process (all its threads, the
    compiler's worker thread included), os.times().
  - etcd keys per pod: count_only ranges per prefix after the population,
    divided by N x M; db bytes per pod from maintenance/status.
  - watch events: every event B's single watch delivered, counted by key
    kind by wrapping kvstore.mirror.Mirror.apply in this process (only B's
    Cluster lives in it); keys B listed at start from Mirror.reset.
  - initial sync: agent start -> B's ipcache holds all N x M remote /32s
    and its own pods.
  - identities/s: distinct label sets through Cluster.allocate_identity:
    one node sequentially; one node with 16 concurrent callers; 4 nodes x 8
    callers all allocating the same label sets (contention; it also checks
    that every node got the same number for each set).

"Cilium (published)" column (figures Cilium published; none of them is the
same experiment, the comment on each row says what it measured):
  [1] https://docs.cilium.io/en/stable/operations/performance/scalability/report/
      (CRD mode, not kvstore; 1000 nodes of 2 vCPU, 50,000 pods, 250
      identities): agent memory +10.5 KiB per pod in the cluster, 438 MiB
      average / 573 MiB max at 50k pods; agent CPU 3.38 % of 2 vCPU on
      average while scaling to 50k pods; under 600 ms for an endpoint to
      have a new policy enforced.
  [2] https://cilium.io/blog/2019/04/24/cilium-15/ (kvstore mode): 5k nodes,
      100k pods supported; etcd at about 700 MB per instance with 1k nodes
      and 60k pods.
  [3] https://docs.cilium.io/en/stable/internals/security-identities/:
      cluster-local identities 256..65535 (ciliate uses the same range).
No published figure was found for identity allocation rate, pod-add ->
remote ipcache latency, keys or watch events per pod, or initial sync
time: "n/a".

Code (bench/cluster/, one job a module; this script keeps the flags, the
role dispatch and the orchestration, and every child is this script again
with --role): spawn.py starts the children, loadgen.py is the "loadgen"
role and loadgen_client.py its pipe, geometry.py says who runs where,
scenarios.py holds the "cluster" and "baseline" roles, allocation.py the
"alloc" role, local_node.py B's policies and local pods, probes.py what B's
process is watched with, process_stats.py and etcd_stats.py the memory, CPU
and key counts, report.py the table.

A script, not a test: prints a table, asserts nothing about time.
Run: .venv/bin/python bench/bench_cluster.py [--nodes 100,500,1000] [--pods 50]
       [--pods-per-identity 10] [--churn 10] [--adds 200] [--add-rate 2]
       [--local-adds 30] [--alloc 300]            (about 5 min)
     .venv/bin/python bench/bench_cluster.py --quick   (smoke run, ~30 s)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import NoReturn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cluster.allocation import alloc_main  # noqa: E402
from bench.cluster.loadgen import loadgen_main  # noqa: E402
from bench.cluster.process_stats import proc_rss_kib  # noqa: E402
from bench.cluster.report import print_report  # noqa: E402
from bench.cluster.scenarios import baseline_main, cluster_main  # noqa: E402
from bench.cluster.spawn import run_child  # noqa: E402
from demo.etcd_process import EtcdProcess, etcd_missing_reason  # noqa: E402


def child_main(a: argparse.Namespace) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator stops us (and etcd) on Ctrl-C
    if a.role == "loadgen":
        return asyncio.run(loadgen_main(a))
    fn = {"cluster": cluster_main, "baseline": baseline_main, "alloc": alloc_main}[a.role]
    result = asyncio.run(fn(a))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", help="comma-separated simulated node counts, one scenario each (default 100,500,1000: the issue's range; --quick: 10)")
    ap.add_argument("--pods", type=int, default=50, help="pods per simulated node (M)")
    ap.add_argument("--pods-per-identity", type=int, default=10)
    ap.add_argument("--churn", type=float, default=10.0, help="background pod events per second")
    ap.add_argument("--adds", type=int, default=200, help="measured remote pod adds per scenario")
    ap.add_argument("--add-rate", type=float, default=2.0, help="measured adds per second (open loop, on top of the churn)")
    ap.add_argument("--local-adds", type=int, default=30, help="measured local pod adds (B and baseline)")
    ap.add_argument("--alloc", type=int, default=300, help="label sets per identity-allocation series")
    ap.add_argument("--quick", action="store_true", help="smoke run: 10 nodes x 10 pods, few adds")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sync-timeout", type=float, default=300.0)
    # internal: the child roles
    ap.add_argument("--role", choices=("loadgen", "cluster", "baseline", "alloc"), help=argparse.SUPPRESS)
    ap.add_argument("--etcd", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    ap.add_argument("--nodes-one", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.role:
        return child_main(a)
    if a.quick:
        a.nodes, a.pods, a.adds, a.add_rate, a.local_adds, a.alloc, a.churn = a.nodes or "10", 10, 20, 5.0, 10, 30, 5.0
    a.nodes = a.nodes or "100,500,1000"
    if (missing := etcd_missing_reason()) is not None:
        print(missing)
        return 1
    node_counts = [int(x) for x in a.nodes.split(",") if x.strip()]

    def on_term(signum: int, frame: FrameType | None) -> NoReturn:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored
    root = Path(tempfile.mkdtemp(prefix="ciliate-bench-cluster-"))
    try:
        scen = []
        for n in node_counts:
            with EtcdProcess(root) as etcd:
                scen.append(run_child("cluster", a, root, timeout=900, etcd=etcd.client_url, nodes_one=n))
                scen[-1]["etcd_rss_kib"] = proc_rss_kib(etcd.proc.pid)
        print("  single-node baseline", file=sys.stderr, flush=True)
        base = run_child("baseline", a, root, timeout=300)
        print("  identity allocation", file=sys.stderr, flush=True)
        with EtcdProcess(root) as etcd:
            alloc = run_child("alloc", a, root, timeout=600, etcd=etcd.client_url)
        print_report(a, scen, base, alloc)
        return 0
    except KeyboardInterrupt:
        print("interrupted; etcd stopped and temporary files removed", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
