"""The two agent scenarios, each the body of a child role: "cluster" (node B
following N simulated nodes through etcd: initial sync, remote adds under
churn, local adds) and "baseline" (the same agent, policies and local pods
on a single node, no kvstore)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sys
import time
from collections.abc import Mapping
from ipaddress import IPv4Network
from pathlib import Path

from agent.adapters.kvstore_state import KvstoreState
from agent.adapters.policy_compiler import PolicyFileLoader, make_compiler_factory
from agent.core.cluster_ports import PeerNode
from agent.daemon import AgentConfig, build_agent, daemon_runtime
from bench.bench_agent import NullDatapath, NullProxy
from bench.cluster.etcd_stats import count_keys, db_size
from bench.cluster.geometry import Geometry
from bench.cluster.loadgen_client import LoadGenClient
from bench.cluster.local_node import ADD_TIMEOUT, local_add_latencies, local_pods, write_policies
from bench.cluster.probes import EVENTS, LIST_DONE, LISTED, IpcacheProbe, count_watch_events, regen_stats
from bench.cluster.process_stats import cpu_s, rss_kib
from kvstore import layout, parse_kvstore_opts

NEW_IDENTITY_EVERY = 4  # 1 measured add in 4 brings a new label set


class NoRouting:
    """No routes: the simulated nodes' addresses belong to nobody, and the
    benchmark sends no packets, so it leaves the host's routing table alone."""

    async def setup(self) -> None: ...
    async def set_routes(self, nodes: Mapping[str, PeerNode]) -> None: ...


def _agent(tmp: Path, **ports):
    """The measured agent: real compiler and loader, no kernel, no Envoy."""
    return build_agent(
        AgentConfig(state_dir=tmp / "state", policy_dir=tmp / "policies", metrics_port=None, poll_interval=3600.0),
        compiler_factory=make_compiler_factory(), loader=PolicyFileLoader(), datapath=NullDatapath(), proxy=NullProxy(),
        **ports,
    )


def log(msg: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def cluster_main(a: argparse.Namespace) -> dict:
    """Node B following N simulated nodes: initial sync, then adds under churn, then local adds."""
    geo = Geometry(a.nodes_one, a.pods, a.pods_per_identity, a.adds)
    tmp = Path(a.tmp)
    url = a.etcd
    count_watch_events()
    n_policies = write_policies(tmp / "policies")
    out: dict = {"nodes": geo.nodes, "pods_per_node": geo.pods, "remote_pods": geo.nodes * geo.pods, "identities": geo.n_sets}

    lg = await LoadGenClient.start(a, url)
    try:
        log(f"N={geo.nodes}: writing {geo.nodes} nodes x {geo.pods} pods, {geo.n_sets} identities into etcd")
        pop = await lg.ask(cmd="populate")
        out["populate_s"] = pop["seconds"]
        keys = {name: count_keys(url, p) for name, p in (
            ("ip", layout.IPS), ("ref", layout.REFS), ("id", layout.IDS), ("labels", layout.LABELS), ("node", layout.NODES))}
        out["keys"] = keys
        out["db_bytes"] = db_size(url)
        expected = geo.remote_nets()
        pods = local_pods(geo.b.pod_cidr)
        mine = [IPv4Network(f"{p.ipv4}/32") for p in pods]

        gc.collect()
        rss0, _ = rss_kib()
        cpu0 = cpu_s()
        shared = KvstoreState(parse_kvstore_opts([f"etcd.endpoints={url}"]), geo.b, tmp / "state")
        agent = _agent(tmp, shared=shared, routing=NoRouting())
        t_start = time.monotonic()
        await agent.start(serve_api=False)
        # Under the daemon's process settings (cycle collector, GIL switch
        # interval): CPython's own full collections over a cluster-sized
        # heap are stalls the daemon never has.
        try:
            async with daemon_runtime(agent):
                probe = IpcacheProbe(agent)
                for p in pods:
                    await agent.create_endpoint(p, None)
                log(f"N={geo.nodes}: agent B started ({n_policies} policies, {len(pods)} local pods); waiting for its initial sync")
                t_sync = await asyncio.wait_for(probe.wait_for(expected + mine), a.sync_timeout)
                await agent.queue.drain(60)
                out["sync_s"] = t_sync - t_start
                out["list_s"] = LIST_DONE[0] - t_start if LIST_DONE else None
                out["sync_cpu_s"] = cpu_s() - cpu0
                gc.collect()
                rss1, _ = rss_kib()
                out["rss_sync_kib"] = rss1 - rss0
                out["listed"] = dict(LISTED)
                st = shared.status()
                if not st.get("ok") or st.get("remote_endpoints") != geo.nodes * geo.pods:
                    raise RuntimeError(f"B's kvstore status after sync: {st}")
                out["local_identities_held"] = st.get("identities_held")

                # Churn, and the measured adds on the nodes the churn leaves alone.
                EVENTS.clear()
                reports0, (regens0, regen_sum0) = probe.reports, regen_stats(agent)
                cpu1, t1 = cpu_s(), time.monotonic()
                await lg.ask(cmd="churn_start", rate=a.churn)
                await asyncio.sleep(2.0)
                log(f"N={geo.nodes}: synced in {out['sync_s']:.1f} s; {a.adds} pod adds at {a.add_rate:g}/s under {a.churn:g} pod events/s of churn")
                rng, adds = random.Random(a.seed), []
                slots = [(i, Geometry.ip(i, slot)) for i in range(geo.add_nodes) for slot in range(geo.pods, geo.SLOTS)]

                async def add(k: int) -> None:
                    node, ip = slots[k]
                    fut = probe.wait_for([IPv4Network(f"{ip}/32")])
                    r = await lg.ask(cmd="add", node=node, ip=str(ip), new=k % NEW_IDENTITY_EVERY == NEW_IDENTITY_EVERY - 1)
                    seen = await asyncio.wait_for(fut, ADD_TIMEOUT)
                    adds.append({"path": r["path"], "total": seen - r["t0"], "write": r["t_put"] - r["t0"]})

                # Open loop: the adds come at their own rate whatever B's latency,
                # so the window (and the load) is the same for every N.
                tasks = []
                for k in range(a.adds):
                    tasks.append(asyncio.create_task(add(k)))
                    await asyncio.sleep(rng.uniform(0.5, 1.5) / a.add_rate)
                await asyncio.gather(*tasks)
                churn = await lg.ask(cmd="churn_stop")
                await agent.queue.drain(60)
                t2, cpu2 = time.monotonic(), cpu_s()
                regens1, regen_sum1 = regen_stats(agent)
                gc.collect()
                rss2, hwm = rss_kib()
                out.update(
                    adds=adds, churn_ops=churn["ops"], churn_rate=churn["ops"] / churn["seconds"], churn_lag=churn["max_lag"],
                    window_s=t2 - t1, window_cpu_s=cpu2 - cpu1, rss_churn_kib=rss2 - rss0, hwm_kib=hwm - rss0,
                    events=dict(EVENTS), reports=probe.reports - reports0,
                    regens=regens1 - regens0, regen_mean_s=(regen_sum1 - regen_sum0) / max(1.0, regens1 - regens0),
                )
                log(f"N={geo.nodes}: {len(adds)} adds done; local pod adds on B")
                out["local_adds"] = await local_add_latencies(agent, probe, geo.b.pod_cidr, a.local_adds)
                st = shared.status()
                out["relists"] = st.get("relists")
                out["conflicts"] = st.get("conflicts")
        finally:
            await agent.stop()
    finally:
        await lg.close()
    return out


async def baseline_main(a: argparse.Namespace) -> dict:
    """The same agent, policies and local pods on a single node (no kvstore)."""
    tmp = Path(a.tmp)
    write_policies(tmp / "policies")
    cidr = IPv4Network("10.127.255.0/24")
    pods = local_pods(cidr)
    gc.collect()
    rss0, _ = rss_kib()
    cpu0 = cpu_s()
    agent = _agent(tmp)
    t_start = time.monotonic()
    await agent.start(serve_api=False)
    try:
        async with daemon_runtime(agent):
            probe = IpcacheProbe(agent)
            for p in pods:
                await agent.create_endpoint(p, None)
            t_ready = await asyncio.wait_for(probe.wait_for([IPv4Network(f"{p.ipv4}/32") for p in pods]), 60)
            await agent.queue.drain(60)
            out = {"sync_s": t_ready - t_start, "sync_cpu_s": cpu_s() - cpu0}
            gc.collect()
            out["rss_sync_kib"] = rss_kib()[0] - rss0
            out["local_adds"] = await local_add_latencies(agent, probe, cidr, a.local_adds)
            gc.collect()
            out["rss_churn_kib"] = rss_kib()[0] - rss0
            return out
    finally:
        await agent.stop()
