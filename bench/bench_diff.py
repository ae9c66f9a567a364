"""`policy diff` benchmark: 1k policies x 1k endpoints, a rollout that edits a
few policies (ports moved, an HTTP rule changed, a CIDR deny added, one
policy removed), against the naive baseline measured in the same run: trace
every (source endpoint, destination endpoint, port) on both states.

The baseline is far too slow to finish (1M pairs x every port), so it is
timed on the first SAMPLE sources and extrapolated linearly, which is what
it costs: every source is the same amount of work.

Goal (issue 14): the diff under 1 s. Run: .venv/bin/python bench/bench_diff.py
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_compile import make_endpoints, make_policy  # noqa: E402
from policy.compiled import Protocol  # noqa: E402
from policy.diff import compile_pair, diff_states  # noqa: E402
from policy.parse import parse_object  # noqa: E402
from policy.trace import Party, trace  # noqa: E402


def _rollout(pols: list[Any]) -> list[Any]:
    new = list(pols)
    for k in (3, 17, 42, 101, 555):
        new[k] = make_policy(k, port_shift=7)  # a port moved
    new[20] = parse_object({  # an HTTP rule changed (k % 10 == 0 has one)
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "p20", "namespace": "ns0"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "app2"}},
                 "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "app0"}}],
                              "toPorts": [{"ports": [{"port": "1020", "protocol": "TCP"}],
                                           "rules": {"http": [{"method": "POST", "path": "/api/v2/.*"}]}}]}]}}, "bench")
    new.append(parse_object({  # a CIDR deny for one namespace
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "deny-net", "namespace": "ns3"},
        "spec": {"endpointSelector": {}, "egressDeny": [{"toCIDR": ["172.20.0.0/16"]}]}}, "bench"))
    del new[777]  # one policy removed
    return new


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rules", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=1000)
    ap.add_argument("--sample", type=int, default=3, help="sources the naive baseline is timed on")
    args = ap.parse_args()
    eps = make_endpoints(args.endpoints)
    old = [make_policy(k) for k in range(args.rules)]
    new = _rollout(old)

    gc.collect()
    t0 = time.perf_counter()
    old_state, new_state, changed = compile_pair(old, new, eps)
    t1 = time.perf_counter()
    d = diff_states(old_state, new_state, changed)
    t2 = time.perf_counter()
    compile_s, diff_s = t1 - t0, t2 - t1

    # Naive: every (src, dst, port) on both states; ports = every port either state's entries start at.
    ports = sorted({e.key.ports.lo for s in (old_state, new_state) for ep in s.endpoints.values() for e in ep.entries
                    if e.key.ports.lo > 0} | {1})
    ids = sorted(old_state.endpoints)
    gc.collect()
    t0 = time.perf_counter()
    for src in ids[: args.sample]:
        for dst in ids:
            for port in ports:
                for st in (old_state, new_state):
                    trace(st, Party.endpoint(src), Party.endpoint(dst), port, Protocol.TCP)
    naive_s = (time.perf_counter() - t0) * len(ids) / args.sample

    n = d.counts()
    print(f"policies={args.rules} endpoints={args.endpoints} identities={d.identities} "
          f"changed endpoints={len(changed)} pairs checked={d.pairs_checked} "
          f"changes={n['changes']} ({n['now_denied']} denied, {n['now_allowed']} allowed) in {n['pairs']} pairs")
    print(f"  diff (compiled states compared)  {diff_s * 1000:9.1f} ms   goal < 1000 ms")
    print(f"  both compiles (one Compiler)     {compile_s * 1000:9.1f} ms")
    print(f"  total                            {(compile_s + diff_s) * 1000:9.1f} ms")
    print(f"  baseline naive trace of every (src, dst, port): {naive_s:,.0f} s "
          f"({len(ids)}x{len(ids)} endpoints x {len(ports)} TCP ports x 2 states; timed on {args.sample} sources, extrapolated)"
          f"   ({naive_s / (compile_s + diff_s):,.0f}x the total)")


if __name__ == "__main__":
    main()
