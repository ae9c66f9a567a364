"""Agent-core benchmark: policy change -> endpoints regenerated, and memory per endpoint.

Runs the real agent core (real policy loader and compiler, the watched policy
directory, the coalescing queue, status) with null kernel and proxy ports,
so it measures what the agent adds on top of compiling. Printed side by side
with the baseline measured in the same run: the bare compiler doing the same
incremental change (parse + upsert + compile), i.e. the floor.

The end-to-end figures of the issue (next connection dropped in the kernel,
next request 403 at L7) need the real datapath and Envoy and come with the
demo; this script is their agent-side share.

Run: .venv/bin/python bench/bench_agent.py [--policies 1000] [--changes 100]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
import tracemalloc
from ipaddress import IPv4Address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.adapters.policy_compiler import PolicyFileLoader, make_compiler_factory  # noqa: E402
from agent.daemon import AgentConfig, build_agent, daemon_runtime  # noqa: E402
from agent.core.models import EndpointCreate  # noqa: E402
from agent.core.ports import ApplyOutcome  # noqa: E402
from policy.compiler import Compiler  # noqa: E402
from policy.endpoint import Endpoint  # noqa: E402
from policy.load import load_paths  # noqa: E402

NAMESPACE = "default"


class NullDatapath:
    async def setup(self) -> None: ...
    async def close(self) -> None: ...
    async def attach_endpoint(self, *a) -> None: ...
    async def detach_endpoint(self, *a) -> None: ...
    async def attached_endpoints(self) -> list:
        return []
    async def apply(self, state) -> ApplyOutcome:
        return ApplyOutcome()
    async def dump_policy(self, eid):
        return []
    async def flow_events(self):
        await asyncio.Event().wait()
        yield {}


class NullProxy:
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def publish(self, state, timeout) -> str:
        return str(state.revision)
    def status(self):
        return {"ok": True}
    async def access_log(self):
        await asyncio.Event().wait()
        yield {}


def policy_yaml(k: int, port: int) -> str:
    return f"""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: p{k}, namespace: {NAMESPACE}}}
spec:
  endpointSelector: {{matchLabels: {{app: app{k % 50}}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: app{(k + 1) % 50}}}}}]
    toPorts: [{{ports: [{{port: "{port}", protocol: TCP}}]}}]
"""


def labels(i: int) -> dict[str, str]:
    return {"app": f"app{i % 50}", "pod-template-hash": f"h{i}"}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


async def change_latency(n_policies: int, n_endpoints: int, changes: int) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="cil-bench-") as tmp:
        pol = Path(tmp) / "policies"
        pol.mkdir()
        for k in range(n_policies):
            (pol / f"p{k:05d}.yaml").write_text(policy_yaml(k, 8000 + k % 1000))
        cfg = AgentConfig(state_dir=Path(tmp) / "state", policy_dir=pol, metrics_port=None, poll_interval=3600, settle=0.0)
        agent = build_agent(cfg, compiler_factory=make_compiler_factory(), loader=PolicyFileLoader(), datapath=NullDatapath(), proxy=NullProxy())
        await agent.start(serve_api=False)
        # As the daemon runs (agent/daemon.py daemon_runtime()): its
        # cycle-collector schedule and GIL switch interval, or the figures
        # would show CPython's own full collections, which the daemon never has.
        try:
            async with daemon_runtime(agent):
                for i in range(n_endpoints):
                    agent.table.upsert(EndpointCreate(container_id=f"c{i}", host_ifname=f"lxc{i}", ipv4=IPv4Address(f"10.210.{i // 256}.{i % 256}"), labels=labels(i)))
                    agent.queue.mark([i + 1])
                await agent.queue.drain(120)
                out = []
                for c in range(changes):
                    k = c % n_policies
                    path = pol / f"p{k:05d}.yaml"
                    t0 = time.perf_counter()
                    path.write_text(policy_yaml(k, 20000 + c))
                    await agent.watcher.poll_once()
                    await agent.queue.drain(60)
                    out.append(time.perf_counter() - t0)
                assert all(p.state == "enforced" for p in agent.policies().policies)
                return out
        finally:
            await agent.stop()


def compiler_floor(n_policies: int, n_endpoints: int, changes: int) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="cil-bench-") as tmp:
        pol = Path(tmp)
        for k in range(n_policies):
            (pol / f"p{k:05d}.yaml").write_text(policy_yaml(k, 8000 + k % 1000))
        c = Compiler()
        for p in load_paths([pol]).policies:
            c.upsert_policy(p)
        for i in range(n_endpoints):
            c.upsert_endpoint(Endpoint(i + 1, labels(i), IPv4Address(f"10.210.{i // 256}.{i % 256}")))
        c.compile()
        out = []
        for ch in range(changes):
            k = ch % n_policies
            path = pol / f"p{k:05d}.yaml"
            t0 = time.perf_counter()
            path.write_text(policy_yaml(k, 20000 + ch))
            for p in load_paths([path]).policies:
                c.upsert_policy(p)
            c.compile()
            out.append(time.perf_counter() - t0)
        return out


async def memory_per_endpoint(n: int) -> float:
    with tempfile.TemporaryDirectory(prefix="cil-bench-") as tmp:
        cfg = AgentConfig(state_dir=Path(tmp) / "state", policy_dir=None, metrics_port=None, settle=0.0)
        agent = build_agent(cfg, compiler_factory=make_compiler_factory(), loader=PolicyFileLoader(), datapath=NullDatapath(), proxy=NullProxy())
        await agent.start(serve_api=False)
        try:
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            for i in range(n):
                agent.table.upsert(EndpointCreate(container_id=f"c{i}", host_ifname=f"lxc{i}", ipv4=IPv4Address(f"10.210.{i // 256}.{i % 256}"), labels=labels(i)))
                agent.queue.mark([i + 1])
            await agent.queue.drain(120)
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            return (after - before) / n
        finally:
            await agent.stop()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policies", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=100)
    ap.add_argument("--changes", type=int, default=100)
    a = ap.parse_args()
    agent = asyncio.run(change_latency(a.policies, a.endpoints, a.changes))
    floor = compiler_floor(a.policies, a.endpoints, a.changes)
    print(f"policy change -> regenerated ({a.policies} policies, {a.endpoints} endpoints, {a.changes} changes;"
          " the daemon's GC schedule and GIL switch interval)")
    print(f"  {'':34} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"  {'agent (file -> status enforced)':34} {pct(agent, .5) * 1e3:8.2f} {pct(agent, .99) * 1e3:8.2f}")
    print(f"  {'baseline: parse + compile only':34} {pct(floor, .5) * 1e3:8.2f} {pct(floor, .99) * 1e3:8.2f}")
    print("agent memory per endpoint (tracemalloc, null kernel/proxy ports)")
    for n in (100, 1000):
        print(f"  {n:5d} endpoints: {asyncio.run(memory_per_endpoint(n)) / 1024:7.1f} KiB/endpoint")
    return 0


if __name__ == "__main__":
    sys.exit(main())
