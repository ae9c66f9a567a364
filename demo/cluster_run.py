"""`ciliate demo --nodes N`: the star-wars stages across a cluster.

Builds N nodes and one etcd (demo/cluster.py), the deathstar on the first
node, the tiefighter on the second, the xwing on the last; every agent runs
with `--kvstore etcd`. Each stage's policy is written to every node's policy
directory (as a cluster-wide source would deliver it) and waited for on
each; the requests then cross the underlay, so the ship's node applies its
egress policy and the deathstar's node its ingress and L7 rules with the
ship's cluster identity. Prints request / expected / observed, exits
non-zero on any mismatch, and removes everything it made.
"""

from __future__ import annotations

import sys
from typing import TextIO

from demo.cluster import Cluster
from demo.node import NodeError
from demo.scenario import DEATHSTAR_PORT, EXAMPLES, PODS, POLICY_FILE, STAGES, Request, Stage
from demo.stages import run_stages
from demo.table import print_table


def placement(nodes: int) -> dict[str, int]:
    """pod name -> node number (1-based): the deathstar alone on node 1."""
    return {"deathstar": 1, "tiefighter": min(2, nodes), "xwing": nodes}


def run(nodes: int = 2, out: TextIO = sys.stdout, prefix: str = "cildc") -> int:
    where = placement(nodes)
    try:
        with Cluster(nodes=nodes, prefix=prefix) as cluster:
            print(f"starting {nodes} nodes (agent, eBPF datapath, Envoy each) and etcd on an underlay...", file=out, flush=True)
            cluster.start()
            for pod in PODS:
                node = cluster.nodes[where[pod.name] - 1]
                p = node.add_pod(pod.name, pod.labels)
                print(f"  pod {p.name:10} on node{where[pod.name]} {p.ip:15} endpoint {p.endpoint_id}  labels {pod.labels}", file=out, flush=True)
            cluster.wait_peers()
            ids = cluster.identities()
            agree = all(len(set(per_node.values())) == 1 for per_node in ids.values())
            print(f"  identities agree on every node: {'yes' if agree else 'NO'} {dict((k, sorted(set(v.values()))) for k, v in ids.items())}", file=out, flush=True)
            home = cluster.nodes[0]
            home.serve_deathstar(port=DEATHSTAR_PORT)
            deathstar = f"{home.pods['deathstar'].ip}:{DEATHSTAR_PORT}"

            def apply(stage: Stage) -> None:
                for f in stage.policy_files:
                    for node in cluster.nodes:
                        node.apply_policy(EXAMPLES / f, name=POLICY_FILE)
                    print(f"  applied examples/starwars/{f} on every node", file=out, flush=True)

            def send(req: Request) -> dict[str, object]:
                return cluster.nodes[where[req.ship] - 1].request(req.ship, req.method, deathstar, req.path)

            def describe(req: Request) -> str:
                return f"{req.ship}@node{where[req.ship]} {req.method} {req.path}"

            rows = run_stages(STAGES, out, apply, send, describe)
            if not agree:
                print("identities differ between nodes", file=out)
                return 1
    except NodeError as exc:
        print(f"demo failed: {exc}", file=out)
        return 2
    return 1 if print_table(rows, out) else 0


if __name__ == "__main__":
    sys.exit(run(int(sys.argv[1]) if len(sys.argv) > 1 else 2))
