"""`ciliate demo`: the star-wars scenario end to end on this machine.

Builds a node (demo/node.py), runs the real agent, joins the deathstar,
tiefighter and xwing pods through ciliate-cni, then goes through the stages
of demo/scenario.py with real HTTP requests, prints request / expected /
observed, and exits non-zero on any mismatch. Removes everything it made.
"""

from __future__ import annotations

import sys
from typing import TextIO

from demo.node import Node, NodeError
from demo.scenario import DEATHSTAR_PORT, EXAMPLES, IPV6_STAGE, PODS, POLICY_FILE, STAGES, Request, Stage
from demo.stages import run_stages
from demo.table import print_table


def run(out: TextIO = sys.stdout, prefix: str = "cildemo") -> int:
    try:
        with Node(prefix=prefix) as node:
            print("starting the agent (eBPF datapath + Envoy) in its own network namespace...", file=out, flush=True)
            node.start_agent()
            for pod in PODS:
                p = node.add_pod(pod.name, pod.labels)
                print(f"  pod {p.name:10} {p.ip:15} {p.ip6 or '':20} endpoint {p.endpoint_id}  labels {pod.labels}",
                      file=out, flush=True)
            node.serve_deathstar(port=DEATHSTAR_PORT)
            ds = node.pods["deathstar"]
            deathstar = {4: f"{ds.ip}:{DEATHSTAR_PORT}", 6: f"[{ds.ip6}]:{DEATHSTAR_PORT}"}
            stages = STAGES + ((IPV6_STAGE,) if ds.ip6 else ())

            def apply(stage: Stage) -> None:
                for f in stage.policy_files:
                    node.apply_policy(EXAMPLES / f, name=POLICY_FILE)
                    print(f"  applied examples/starwars/{f}", file=out, flush=True)

            def send(req: Request) -> dict[str, object]:
                return node.request(req.ship, req.method, deathstar[req.family], req.path)

            rows = run_stages(stages, out, apply, send)
    except NodeError as exc:
        print(f"demo failed: {exc}", file=out)
        return 2
    return 1 if print_table(rows, out) else 0


def main() -> int:
    return run()


if __name__ == "__main__":
    sys.exit(main())
