"""Compile-time benchmark: full compile of N rules x 1k endpoints, then one
changed policy / one new endpoint incrementally, side by side with the
baseline of a naive full recompile measured in the same run.

Goal (issue #2): full compile of 10k rules x 1k endpoints < 1 s; one change
< 20 ms. Run: .venv/bin/python bench/bench_compile.py [--rules 1000 10000]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from policy.compiler import Compiler, compile_state  # noqa: E402
from policy.endpoint import Endpoint  # noqa: E402
from policy.parse import parse_object  # noqa: E402

# 1k endpoints = 10 namespaces x 20 apps x 5 replicas: 200 identities, as
# replicas of one deployment share labels (pod-template-hash is ignored).
NAMESPACES = 10
APPS = 20
TIERS = ("web", "api", "db")


def make_endpoints(n: int, unique: bool = False) -> list[Endpoint]:
    """unique=True gives every endpoint its own identity (worst case for sharing)."""
    out = []
    for i in range(n):
        labels = {
            "k8s:io.kubernetes.pod.namespace": f"ns{i % NAMESPACES}",
            "k8s:app": f"app{(i // NAMESPACES) % APPS}",
            "k8s:tier": TIERS[((i // NAMESPACES) % APPS) % len(TIERS)],
            "k8s:pod-template-hash": f"h{i}",  # per-pod, ignored for identity
        }
        if unique:
            labels["k8s:instance"] = str(i)
        out.append(Endpoint(i + 1, labels, IPv4Address(f"10.{200 + i // 65536}.{(i // 256) % 256}.{i % 256}")))
    return out


def make_policy(k: int, port_shift: int = 0) -> Any:
    ns = f"ns{k % NAMESPACES}"
    rule: dict[str, Any] = {
        "fromEndpoints": [{"matchLabels": {"app": f"app{(k * 7) % APPS}"}}],
        "toPorts": [{"ports": [{"port": str(1000 + (k + port_shift) % 500), "protocol": "TCP"}]}],
    }
    if k % 10 == 0:
        rule["toPorts"][0]["rules"] = {"http": [{"method": "GET", "path": f"/api/v{k % 3}/.*"}]}
    if k % 7 == 0:
        rule["fromEndpoints"][0]["matchExpressions"] = [{"key": "tier", "operator": "In", "values": ["web", "api"]}]
    spec: dict[str, Any] = {"endpointSelector": {"matchLabels": {"app": f"app{(k // NAMESPACES) % APPS}"}}, "ingress": [rule]}
    if k % 20 == 0:
        spec["ingressDeny"] = [{"fromEndpoints": [{"matchLabels": {"tier": "db"}}], "toPorts": [{"ports": [{"port": "22"}]}]}]
    if k % 25 == 0:
        spec["egress"] = [{"toCIDRSet": [{"cidr": f"172.{16 + k % 16}.0.0/16", "except": [f"172.{16 + k % 16}.{k % 256}.0/24"]}]},
                          {"toEntities": ["cluster"]}]
    obj = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
           "metadata": {"name": f"p{k}", "namespace": ns}, "spec": spec}
    return parse_object(obj, "bench")


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times = []
    out = None
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def run(rules: int, endpoints: int, repeat: int, unique: bool = False) -> None:
    eps = make_endpoints(endpoints, unique)
    t0 = time.perf_counter()
    pols = [make_policy(k) for k in range(rules)]
    parse_s = time.perf_counter() - t0

    def full() -> Compiler:
        c = Compiler()
        for p in pols:
            c.upsert_policy(p)
        for ep in eps:
            c.upsert_endpoint(ep)
        c.compile()
        return c

    full_s, c = timed(full, repeat)
    state = c.compile()
    n_entries = sum(len(e.entries) for e in state.endpoints.values())
    n_ids = len({e.identity for e in state.endpoints.values()})

    # One changed policy (its port moves), alternating so every run is a real change.
    changes = [make_policy(3, port_shift=s) for s in (1, 2, 3, 4, 5, 6)]
    inc_times = []
    affected = []
    for p in changes:
        gc.collect()
        t0 = time.perf_counter()
        c.upsert_policy(p)
        c.compile()
        inc_times.append(time.perf_counter() - t0)
        affected.append(len(c.changed_endpoints()))
    inc_s = statistics.median(inc_times)
    naive_s, _ = timed(lambda: compile_state(pols[:3] + [changes[-1]] + pols[4:], eps), repeat)

    # One new endpoint with a new identity (selected by some policies, a peer of others).
    ep_times = []
    for j in range(5):
        new = Endpoint(100000 + j, {"k8s:io.kubernetes.pod.namespace": "ns1", "k8s:app": "app1", "k8s:tier": f"new{j}"},
                       IPv4Address(f"10.250.0.{j + 1}"))
        gc.collect()
        t0 = time.perf_counter()
        c.upsert_endpoint(new)
        c.compile()
        ep_times.append(time.perf_counter() - t0)
    ep_s = statistics.median(ep_times)

    # One more replica of an existing deployment (its identity exists already).
    rep_times = []
    for j in range(5):
        replica = Endpoint(200000 + j, dict(eps[j].labels), IPv4Address(f"10.251.0.{j + 1}"))
        gc.collect()
        t0 = time.perf_counter()
        c.upsert_endpoint(replica)
        c.compile()
        rep_times.append(time.perf_counter() - t0)
    rep_s = statistics.median(rep_times)

    shape = "one identity per endpoint" if unique else "5 replicas per identity"
    print(f"rules={rules:>6} endpoints={endpoints} identities={n_ids} ({shape}) entries={n_entries} (parse {parse_s*1000:.0f} ms, not counted)")
    print(f"  full compile            {full_s*1000:9.1f} ms   goal < 1000 ms")
    print(f"  one policy changed      {inc_s*1000:9.2f} ms   goal < 20 ms   baseline naive full recompile {naive_s*1000:.1f} ms"
          f"   ({naive_s/inc_s:.0f}x; {statistics.median(affected):.0f} endpoints changed)")
    print(f"  one endpoint, new ident {ep_s*1000:9.2f} ms                  baseline naive full recompile {naive_s*1000:.1f} ms")
    print(f"  one endpoint, known id  {rep_s*1000:9.2f} ms                  baseline naive full recompile {naive_s*1000:.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rules", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--endpoints", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    for unique in (False, True):
        for n in args.rules:
            run(n, args.endpoints, args.repeat, unique)


if __name__ == "__main__":
    main()
