"""The `ciliate demo` subcommand: its flags, and which demo they pick (one
node: demo/run.py; `--nodes N`: demo/cluster_run.py; `--k8s`:
demo/k8s_run.py, as a program of its own). The demos themselves never import
this module nor each other."""

from __future__ import annotations

import argparse
import os
import sys

from demo.cluster_run import run as run_cluster
from demo.run import run


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("demo", help="run the star-wars demo on this machine (root)")
    p.add_argument(
        "--k8s", action="store_true",
        help="the same stages through the Kubernetes API: a simulated, in-process API server (demo/kubesim), Pod objects, kubectl apply (demo/k8s_run.py)",
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
        return run_cluster(args.nodes)
    return run()


def run_k8s() -> int:
    """Hands over to demo/k8s_run.py as its own program: that demo serves the
    simulated API server (demo/kubesim), which the `ciliate` command itself
    must never import (import-linter; lazy imports count too)."""
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "demo.k8s_run"])
    return 2  # not reached: execv replaces this process
