"""Load benchmark: a directory of N policy files (bench_compile.py's mix:
L4, HTTP, matchExpressions, deny, CIDR sets with excepts, entities) read and
validated by `load_paths`, and the same objects through `parse_object` alone
(no YAML), so a change in validation cost shows apart from YAML parsing.

Run: .venv/bin/python bench/bench_load.py [--policies 1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from policy.load import load_paths  # noqa: E402
from policy.parse import parse_object  # noqa: E402

NAMESPACES = 10
APPS = 20


def make_object(k: int) -> dict[str, Any]:
    ns = f"ns{k % NAMESPACES}"
    rule: dict[str, Any] = {
        "fromEndpoints": [{"matchLabels": {"app": f"app{(k * 7) % APPS}"}}],
        "toPorts": [{"ports": [{"port": str(1000 + k % 500), "protocol": "TCP"}]}],
    }
    if k % 10 == 0:
        rule["toPorts"][0]["rules"] = {"http": [{"method": "GET", "path": f"/api/v{k % 3}/.*", "headers": ["X-Team: a"]}]}
    if k % 7 == 0:
        rule["fromEndpoints"][0]["matchExpressions"] = [{"key": "tier", "operator": "In", "values": ["web", "api"]}]
    spec: dict[str, Any] = {"endpointSelector": {"matchLabels": {"app": f"app{(k // NAMESPACES) % APPS}"}}, "ingress": [rule]}
    if k % 20 == 0:
        spec["ingressDeny"] = [{"fromEndpoints": [{"matchLabels": {"tier": "db"}}], "toPorts": [{"ports": [{"port": "22"}]}]}]
    if k % 25 == 0:
        spec["egress"] = [{"toCIDRSet": [{"cidr": f"172.{16 + k % 16}.0.0/16", "except": [f"172.{16 + k % 16}.{k % 256}.0/24"]}]},
                          {"toEntities": ["cluster"]}]
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": f"p{k}", "namespace": ns}, "spec": spec}


def median_ms(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policies", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    objs = [make_object(k) for k in range(args.policies)]
    with tempfile.TemporaryDirectory() as tmp:
        for k, obj in enumerate(objs):
            (Path(tmp) / f"p{k:05d}.yaml").write_text(yaml.safe_dump(obj))

        def load() -> None:
            res = load_paths([tmp])
            assert res.ok and len(res.policies) == args.policies, res.errors[:3]

        load_ms = median_ms(load, args.repeat)
    parse_ms = median_ms(lambda: [parse_object(o, "bench") for o in objs], args.repeat)
    print(f"{args.policies} policies: load_paths {load_ms:.0f} ms (YAML included), parse_object alone {parse_ms:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
