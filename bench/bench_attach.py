#!/usr/bin/env python3
"""Endpoint attach benchmark: time to attach N endpoints to one install.

One node with N pods (tests/kernelnode.py), one Datapath; every endpoint is
attached in turn and timed. The first attach pays the compile (it is the
baseline: what every attach cost when each endpoint had its own build); the
rest reuse the shared program. Figures side by side, from the same run, with
the loader's compile count.

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
from tests.kernelnode import PodSpec, kernel_node  # noqa: E402


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
    with kernel_node(pods, prefix="cab") as node:
        dp = Datapath(pin_dir, state_dir, netns=node.netns)
        try:
            for i, spec in enumerate(pods):
                p = node.pods[spec.name]
                t0 = time.perf_counter()
                dp.attach_endpoint(100 + i, p.host_ifname, p.ip, 1000 + i)
                times.append(time.perf_counter() - t0)
        finally:
            dp.teardown()
            shutil.rmtree(pin_dir, ignore_errors=True)
            shutil.rmtree(state_dir, ignore_errors=True)
    after = compiles()
    rest = times[1:] or times
    print(f"attach {args.n} endpoints: total {sum(times) * 1e3:8.1f} ms")
    print(f"  first (compiles, baseline)  {times[0] * 1e3:8.1f} ms")
    print(f"  later, median               {statistics.median(rest) * 1e3:8.1f} ms"
          f"   max {max(rest) * 1e3:.1f} ms   ratio to first {statistics.median(rest) / times[0]:.3f}")
    if before is not None:
        print(f"  compiles                    {after - before}")


if __name__ == "__main__":
    main()
