"""`ciliate demo`: the star-wars scenario end to end on this machine.

Builds a node (demo/node.py), runs the real agent, joins the deathstar,
tiefighter and xwing pods through ciliate-cni, then goes through the stages
of demo/scenario.py with real HTTP requests, prints request / expected /
observed, and exits non-zero on any mismatch. Removes everything it made.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TextIO

from demo.node import Node, NodeError
from demo.scenario import DEATHSTAR_PORT, PODS, STAGES, observed_label
from demo.table import Row, curl_view, line, print_table

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "starwars"
POLICY_FILE = "starwars.yaml"  # one file, replaced per stage, so no stage ever runs without policy


def run(out: TextIO = sys.stdout, prefix: str = "cildemo") -> int:
    rows: list[Row] = []
    try:
        with Node(prefix=prefix) as node:
            print("starting the agent (eBPF datapath + Envoy) in its own network namespace...", file=out, flush=True)
            node.start_agent()
            for pod in PODS:
                p = node.add_pod(pod.name, pod.labels)
                print(f"  pod {p.name:10} {p.ip:15} endpoint {p.endpoint_id}  labels {pod.labels}", file=out, flush=True)
            node.serve_deathstar(port=DEATHSTAR_PORT)
            deathstar = f"{node.pods['deathstar'].ip}:{DEATHSTAR_PORT}"
            for n, stage in enumerate(STAGES, 1):
                print(f"\nstage {n}: {stage.title}", file=out, flush=True)
                for f in stage.policy_files:
                    node.apply_policy(EXAMPLES / f, name=POLICY_FILE)
                    print(f"  applied examples/starwars/{f}", file=out, flush=True)
                for req in stage.requests:
                    outcome = node.request(req.ship, req.method, deathstar, req.path)
                    row = Row(f"{n}", f"{req.ship} {req.method} {req.path}", req.expect, observed_label(outcome), curl_view(outcome))
                    rows.append(row)
                    print(line(row), file=out, flush=True)
    except NodeError as exc:
        print(f"demo failed: {exc}", file=out)
        return 2
    return 1 if print_table(rows, out) else 0


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("demo", help="run the star-wars demo on this machine (root)")
    p.add_argument(
        "--k8s", action="store_true",
        help="the same stages through the Kubernetes API: an in-process API server, Pod objects, kubectl apply (demo/k8s_run.py)",
    )
    p.add_argument(
        "--nodes", type=int, default=1, metavar="N",
        help="N nodes (2-9) sharing one etcd, the deathstar and the ships on different nodes (demo/cluster_run.py)",
    )
    p.set_defaults(func=_dispatch)


def _dispatch(args: argparse.Namespace) -> int:
    if args.k8s:
        return run_k8s()
    if args.nodes != 1:
        if not 2 <= args.nodes <= 9:
            print("ciliate demo: --nodes takes 2 to 9", file=sys.stderr)
            return 2
        from demo.cluster_run import run as run_cluster

        return run_cluster(args.nodes)
    return run()


def run_k8s() -> int:
    """Hands over to demo/k8s_run.py as its own program: that demo serves the
    test API server (kubesim), which the `ciliate` command itself must never
    import (import-linter; lazy imports count too)."""
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "demo.k8s_run"])
    return 2  # not reached: execv replaces this process


def main() -> int:
    return run()


if __name__ == "__main__":
    sys.exit(main())
