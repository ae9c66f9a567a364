"""The printed table: one column per scenario, the single-node baseline,
and the figures Cilium published, then the identity allocation rates."""

from __future__ import annotations

import argparse
import os
import subprocess

from bench.bench_agent import pct
from bench.cluster.local_node import POLICY_NAMESPACES
from bench.cluster.scenarios import NEW_IDENTITY_EVERY
from bench.cluster.spawn import ROOT


def _ms(xs: list[float], q: float) -> str:
    return f"{pct(xs, q) * 1e3:.0f}" if xs else "-"


def _p(xs: list[float]) -> str:
    return f"{_ms(xs, .5)} / {_ms(xs, .99)} ms" if xs else "-"


def code_version() -> str:
    """HEAD, and whether the measured packages had uncommitted changes (kvstore/ is young and moving)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "kvstore", "agent", "policy"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    changed = sorted({ln[3:].split("/")[0] for ln in dirty if ln.strip()})
    return f"{head or 'unknown'}" + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def print_report(a: argparse.Namespace, scen: list[dict], base: dict, alloc: dict) -> None:
    cols = [f"N={s['nodes']}" for s in scen] + ["single node", "Cilium (published)"]
    width = [46] + [17] * len(scen) + [17, 44]

    def row(label: str, per: list[str], base_v: str = "", cil: str = "n/a") -> None:
        cells = [label, *per, base_v or "-", cil]
        print("  " + "".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}  " if i < len(cells) - 1 else f"{c}" for i, (c, w) in enumerate(zip(cells, width))))

    print(f"cluster scale: real etcd 3.4 on 127.0.0.1, agent B in-process without kernel/Envoy; "
          f"M={a.pods} pods/node, ~{a.pods_per_identity} pods/identity, {POLICY_NAMESPACES * 2 + 2} policies; "
          f"code {code_version()}, {os.cpu_count()} CPUs")
    print(f"measured adds: {a.adds} remote at {a.add_rate:g}/s (1 in {NEW_IDENTITY_EVERY} new identity) under churn of {a.churn:g} pod events/s; "
          f"{a.local_adds} local after the churn")
    row("", cols[:-2], cols[-2], cols[-1])
    row("remote pods / identities", [f"{s['remote_pods']} / {s['identities']}" for s in scen], "0 / 0",
        "50000 / 250 [1]; 100k pods, 5k nodes [2]")
    row("etcd: population written in", [f"{s['populate_s']:.1f} s" for s in scen], "")
    row("etcd keys per pod (all prefixes)", [f"{sum(s['keys'].values()) / s['remote_pods']:.2f}" for s in scen], "", "n/a")
    row("  ip / ref / id+labels / node keys per pod",
        [f"{s['keys']['ip'] / s['remote_pods']:.2f}/{s['keys']['ref'] / s['remote_pods']:.2f}/"
         f"{(s['keys']['id'] + s['keys']['labels']) / s['remote_pods']:.2f}/{s['keys']['node'] / s['remote_pods']:.2f}" for s in scen], "")
    row("etcd db bytes per pod (after population)", [f"{s['db_bytes'] / s['remote_pods']:.0f}" for s in scen], "", "n/a")
    row("etcd RSS at the end of the run", [f"{s['etcd_rss_kib'] / 1024:.0f} MiB" for s in scen], "",
        "~700 MB per etcd, 1k nodes, 60k pods [2]")
    row("B initial sync (start -> ipcache full)", [f"{s['sync_s']:.2f} s" for s in scen], f"{base['sync_s']:.2f} s", "n/a")
    row("B CPU during initial sync", [f"{s['sync_cpu_s']:.2f} s" for s in scen], f"{base['sync_cpu_s']:.2f} s", "n/a")
    row("  of which: list of the whole state done", [f"{s['list_s']:.2f} s" for s in scen], "", "n/a")
    row("B keys listed per remote pod at start", [f"{sum(s['listed'].values()) / s['remote_pods']:.2f}" for s in scen], "", "n/a")
    row("B RSS delta after sync (VmRSS)", [f"{s['rss_sync_kib'] / 1024:.1f} MiB" for s in scen], f"{base['rss_sync_kib'] / 1024:.1f} MiB",
        "438 MiB avg, 573 max, total, 50k pods [1]")
    row("  per remote pod", [f"{s['rss_sync_kib'] / s['remote_pods']:.2f} KiB" for s in scen], "", "10.5 KiB per pod in cluster [1]")
    if len(scen) > 1:
        lo, hi = scen[0], scen[-1]
        slope = (hi["rss_sync_kib"] - lo["rss_sync_kib"]) / max(1, hi["remote_pods"] - lo["remote_pods"])
        row(f"  marginal, N={lo['nodes']} -> N={hi['nodes']}", [""] * (len(scen) - 1) + [f"{slope:.2f} KiB"], "",
            "10.5 KiB per pod in cluster [1]")
    row("B RSS delta after churn + adds", [f"{s['rss_churn_kib'] / 1024:.1f} MiB" for s in scen], f"{base['rss_churn_kib'] / 1024:.1f} MiB")
    row("B CPU during churn + adds (share of 1 core)",
        [f"{s['window_cpu_s']:.1f} s / {s['window_s']:.0f} s = {100 * s['window_cpu_s'] / s['window_s']:.0f}%" for s in scen], "",
        "3.38% of 2 vCPU avg, scaling to 50k pods [1]")
    row("churn achieved (pod events/s)", [f"{s['churn_rate']:.1f}" for s in scen], "")
    row("B regenerations in that window / mean", [f"{s['regens']:.0f} / {s['regen_mean_s'] * 1e3:.0f} ms" for s in scen], "")
    row("remote pod add -> B ipcache p50/p99", [_p([x["total"] for x in s["adds"]]) for s in scen], "", "n/a")
    for path, what in (("held", "  node already held the identity"), ("ref", "  existing identity, new ref"), ("new", "  new identity")):
        row(f"{what} (n)", [f"{_p([x['total'] for x in s['adds'] if x['path'] == path])} "
                            f"({sum(1 for x in s['adds'] if x['path'] == path)})" for s in scen], "")
    row("  of which the etcd writes, p50", [f"{_ms([x['write'] for x in s['adds']], .5)} ms" for s in scen], "")
    row("local pod add -> own ipcache p50/p99", [_p(s["local_adds"]) for s in scen], _p(base["local_adds"]),
        "<600 ms to enforce a new policy [1]")
    row("watch events per pod change (churn+adds)",
        [f"{sum(s['events'].values()) / (s['churn_ops'] + len(s['adds'])):.2f}" for s in scen], "", "n/a")
    print()
    for s in scen:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(s["events"].items()))
        print(f"  N={s['nodes']}: watch events by key kind: {kinds} "
              f"(for {s['churn_ops']} churn events and {len(s['adds'])} adds)")
    print()
    print(f"identity allocation (Cluster.allocate_identity, {a.alloc} distinct label sets each, fresh etcd)")
    print(f"  {'sequential, 1 node':46}{alloc['sequential']:>10.0f} ids/s    Cilium (published): n/a")
    print(f"  {'16 concurrent callers, 1 node':46}{alloc['concurrent']:>10.0f} ids/s")
    print(f"  {'4 nodes x 8 callers, the same label sets':46}{alloc['contended']:>10.0f} ids/s   "
          f"({alloc['distinct_ids']} distinct ids, {alloc['mismatches']} label sets with differing ids across nodes)")
    print("  identity range 256..65535 cluster-wide, as Cilium's cluster-local identities [3]")
    print()
    print("[1] https://docs.cilium.io/en/stable/operations/performance/scalability/report/ (CRD mode, 1000 nodes)")
    print("[2] https://cilium.io/blog/2019/04/24/cilium-15/ (kvstore mode)")
    print("[3] https://docs.cilium.io/en/stable/internals/security-identities/")
    print("RSS: VmRSS of the agent's own process (/proc/self/status), gc.collect() first; CPU: os.times() user+sys of that process.")
