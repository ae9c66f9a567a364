#!/usr/bin/env python3
"""DNS proxy benchmark (issue 22): what the proxy adds, beside a direct query.

One node (demo/node.py: real agent, kernel datapath, Envoy) with a client
pod, a resolver pod running Debian's dnsmasq, and one host outside the
cluster answering on many addresses. Figures, each beside its baseline from
the same run:

1. Latency at --qps queries per second (default 1,000) for names already
   learned: p50/p99 straight to the resolver (no DNS rule, the kernel
   forwards) vs through the proxy (a DNS rule redirects).
2. From an answer to the kernel admitting its addresses: each of --fresh
   names resolved once (a new address: the answer waits for the
   regeneration), then a TCP connect at once: the query's latency beside a
   known name's, and how many connects failed (should be none: the answer
   is released only once the address is admitted).
3. Memory per 10,000 cached names (in process, tracemalloc): the FQDN cache,
   the names snapshot and the compiled state with a toFQDNs selector matching
   them all (a CIDR identity and ipcache entry per address), minus the same
   with no name.

    .venv/bin/python bench/bench_dns.py [--qps 1000] [--seconds 5] [--fresh 100]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
import tracemalloc
from ipaddress import IPv4Address, ip_address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo.node import Node  # noqa: E402
from dnsproxy.cache import FQDNCache  # noqa: E402
from policy.compiler import compile_state  # noqa: E402
from policy.endpoint import Endpoint  # noqa: E402
from policy.fqdn_resolve import resolve  # noqa: E402
from policy.load import load_text  # noqa: E402

PY = sys.executable
HOST, GATEWAY = "10.219.0.2", "10.219.0.1"  # the outside host; its extra addresses are 10.219.1.0/24 ...
KNOWN = [f"k{i}.bench.test" for i in range(20)]

POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench-dns, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules: {dns: [{matchPattern: "*.bench.test"}]}
  - toFQDNs: [{matchPattern: "*.bench.test"}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def load(node: Node, *argv: str) -> dict:
    out = subprocess.run(["ip", "netns", "exec", node.pods["client"].netns, PY, "bench/dns_load.py", *argv],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"dns_load failed: {out.stderr[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def row(label: str, r: dict) -> str:
    ms = r["ms"]
    return (f"  {label:<34} p50 {pct(ms, 0.5):6.2f} ms  p99 {pct(ms, 0.99):6.2f} ms  answered {r['answered']}/{r['sent']}"
            f"  timeouts {r['timeouts']}  {r['achieved_qps']:.0f} q/s  {r['rcodes']}")


def memory(n: int) -> None:
    """tracemalloc of cache + snapshot + compiled state for n names, minus none."""
    [policy] = load_text(POLICY, "bench.yaml").policies
    eps = [Endpoint(1, {"app": "client"}, IPv4Address("10.0.0.1")), Endpoint(2, {"app": "dns"}, IPv4Address("10.0.0.2"))]

    def build(count: int) -> tuple[int, object]:
        tracemalloc.start()
        base = tracemalloc.take_snapshot()
        cache = FQDNCache()
        now = time.time()
        for i in range(count):
            cache.learn(1, [f"n{i}.bench.test"], [(ip_address(0x0A800000 + i), 300)], now)
        names = cache.names()
        state = compile_state([resolve(policy, names).policy], eps)
        size = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(base, "filename"))
        tracemalloc.stop()
        return size, (cache, names, state)

    empty, keep0 = build(0)
    full, keep1 = build(n)
    per = (full - empty) / n * 10_000
    print(f"memory: {n} names -> {full / 2**20:.1f} MiB, none -> {empty / 2**20:.1f} MiB; "
          f"per 10,000 names {per / 2**20:.1f} MiB (cache {len(keep1[0])} entries, "  # type: ignore[index]
          f"ipcache {len(keep1[2].ipcache)} prefixes)")  # type: ignore[index]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--qps", type=float, default=1000)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--fresh", type=int, default=100, help="new names resolved once each (figure 2)")
    ap.add_argument("--memory-names", type=int, default=10_000)
    args = ap.parse_args()

    memory(args.memory_names)

    exe = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    fresh = [f"f{i}.bench.test" for i in range(args.fresh)]
    extra = [str(IPv4Address("10.219.1.0") + i) for i in range(len(KNOWN) + len(fresh))]
    records = [f"--host-record={n},{a},300" for n, a in zip(KNOWN + fresh, extra)]
    with Node(prefix="cilbdns", subnet="10.218.0.0/24", subnet6=None) as node:
        node.start_agent()
        node.add_pod("client", {"app": "client"})
        dns_pod = node.add_pod("dns", {"app": "dns"})
        node.add_host("out", HOST, GATEWAY, prefixlen=16)
        for a in extra:
            subprocess.run(["ip", "-n", node.pods["out"].netns, "addr", "add", f"{a}/32", "dev", "eth0"], check=True)
        node.serve_deathstar("out", 80)
        node.spawn("dns", [exe, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                           "--bind-interfaces", f"--listen-address={dns_pod.ip}", "--port=53", "--pid-file=",
                           "--user=root", "--dns-forward-max=10000", "--cache-size=10000", *records])
        deadline = time.monotonic() + 30
        while load(node, "rate", dns_pod.ip, "--names", KNOWN[0], "--qps", "10", "--seconds", "0.1")["answered"] == 0:
            if time.monotonic() > deadline:
                raise SystemExit("dnsmasq did not answer")

        names = ",".join(KNOWN)
        rate_args = ("--names", names, "--qps", str(args.qps), "--seconds", str(args.seconds))
        load(node, "rate", dns_pod.ip, *rate_args[:2], "--qps", "200", "--seconds", "1")  # warm up
        direct = load(node, "rate", dns_pod.ip, *rate_args)

        f = node.policies / "bench-dns.yaml"
        f.write_text(POLICY)
        node.apply_policy(f)
        load(node, "rate", dns_pod.ip, "--names", names, "--qps", "200", "--seconds", "1")  # learn KNOWN
        proxied = load(node, "rate", dns_pod.ip, *rate_args)
        known = load(node, "fresh", dns_pod.ip, "--names", names)
        new = load(node, "fresh", dns_pod.ip, "--names", ",".join(fresh))
        rss = node.agent_rss()

    print(f"latency at {args.qps:.0f} queries/s for {args.seconds:.0f} s, {len(KNOWN)} names already learned:")
    print(row("direct to the resolver (baseline)", direct))
    print(row("through the DNS proxy", proxied))
    print(f"  proxy adds p50 {pct(proxied['ms'], 0.5) - pct(direct['ms'], 0.5):+.2f} ms, "
          f"p99 {pct(proxied['ms'], 0.99) - pct(direct['ms'], 0.99):+.2f} ms")
    print("answer -> kernel admits its address (one query at a time, then a TCP connect at once):")
    for label, r in (("known name (baseline)", known), ("new name (waits for the regeneration)", new)):
        print(f"  {label:<40} query p50 {pct(r['query_ms'], 0.5):6.2f} ms  p99 {pct(r['query_ms'], 0.99):6.2f} ms  "
              f"connect p50 {pct(r['connect_ms'], 0.5):5.2f} ms  failed {r['failed']}/{r['names']}")
    print(f"  a new name's answer waits p50 {pct(new['query_ms'], 0.5) - pct(known['query_ms'], 0.5):+.2f} ms for its "
          f"address to be admitted; connects refused after a released answer: {new['failed']}")
    if new["failures"]:
        print(f"  first refused connects (name, query ms, error): {new['failures'][:5]}")
    print(f"agent RSS after the run: {rss / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
