#!/usr/bin/env python3
"""Endpoint attach benchmark: time to attach N endpoints to one install.

One node with N pods (tests/kernelnode.py), one install; every endpoint is
attached in turn and timed. The first attach pays the compile (it is the
baseline: what every attach cost when each endpoint had its own build); the
rest reuse the shared program. Half of them are attached from inside the
node's netns, as the agent does, half from the root netns as the tests do
(pyroute2 forks a helper to reach another netns). Figures side by side, from
the same run, with the loader's compile count. Of an attach in the node's
netns, ~13 ms is the kernel's RCU grace period after linking the endpoint's
policy map into the map-of-maps (bpf(MAP_UPDATE_ELEM) waits for it).

    flock /tmp/ciliate-kernel.lock .venv/bin/python bench/bench_attach.py [-n 20]
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from ipaddress import IPv4Address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from redirect import loader  # noqa: E402
from redirect.datapath import Datapath  # noqa: E402
from tests.kernelnode import PodSpec, in_netns, kernel_node  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20, help="endpoints to attach")
    args = ap.parse_args()
    pods = [PodSpec(f"p{i}", str(IPv4Address("10.203.0.2") + i)) for i in range(args.n)]
    pin_dir = Path(f"/sys/fs/bpf/cab-bench-{secrets.token_hex(3)}")
    state_dir = Path(tempfile.mkdtemp(prefix="cab-state-"))
    times: list[float] = []
    compiles = getattr(loader, "compile_count", lambda: None)
    before = compiles()
    # The agent runs in its node's netns (the demo's nodes, a pod's host
    # netns) and opens netlink there directly. Reaching into another netns,
    # as tests do, costs pyroute2 a forked helper per netlink session: shown
    # apart, on the second half of the pods.
    half = max(2, (args.n + 1) // 2)
    inside: list[float] = []
    outside: list[float] = []
    first = 0.0
    with kernel_node(pods, prefix="cab") as node:
        dp_in = Datapath(pin_dir, state_dir)
        dp_out = Datapath(pin_dir, state_dir, netns=node.netns)
        try:
            for i, spec in enumerate(pods):
                p = node.pods[spec.name]
                in_node = i < half
                with in_netns(node.netns if in_node else None):
                    t0 = time.perf_counter()
                    (dp_in if in_node else dp_out).attach_endpoint(100 + i, p.host_ifname, p.ip, 1000 + i)
                    took = time.perf_counter() - t0
                if i == 0:
                    first = took
                else:
                    (inside if in_node else outside).append(took)
        finally:
            with in_netns(node.netns):
                dp_in.teardown()
            shutil.rmtree(pin_dir, ignore_errors=True)
            shutil.rmtree(state_dir, ignore_errors=True)
    after = compiles()
    print(f"attach {args.n} endpoints")
    print(f"  first (compiles, baseline)                     {first * 1e3:8.1f} ms")
    for what, xs in (("in the node's netns (the agent), median", inside), ("from another netns (tests), median", outside)):
        if xs:
            print(f"  later, {what:<42}{statistics.median(xs) * 1e3:8.1f} ms   max {max(xs) * 1e3:.1f} ms"
                  f"   ratio to first {statistics.median(xs) / first:.3f}   (n={len(xs)})")
    if before is not None:
        print(f"  compiles                                       {after - before}")


if __name__ == "__main__":
    main()
