"""The "alloc" role: identities per second through Cluster.allocate_identity
on a fresh etcd, one node sequentially, one node with concurrent callers, and
several nodes racing for the same label sets (which must all agree)."""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from kvstore import Cluster, NodeInfo, parse_kvstore_opts
from policy.endpoint import NAMESPACE_LABEL
from policy.identity import identity_labels


async def alloc_main(a: argparse.Namespace) -> dict:
    """Identities per second through Cluster.allocate_identity, distinct label sets."""
    cfg, tmp, count = parse_kvstore_opts([f"etcd.endpoints={a.etcd}"]), Path(a.tmp), a.alloc

    def label_set(tag: str, k: int) -> frozenset[str]:
        return identity_labels({"app": f"{tag}-{k}", NAMESPACE_LABEL: "alloc"})

    async def node(k: int) -> Cluster:
        info = NodeInfo(name=f"alloc-{k}", ip=IPv4Address(f"172.30.0.{k + 1}"), pod_cidr=IPv4Network(f"10.126.{k}.0/24"))
        c = Cluster(cfg, info, tmp / f"alloc-{k}", lambda view: None, op_timeout=10.0)
        await c.start()
        deadline = time.monotonic() + 30
        while not c.connected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{info.name}: no lease after 30 s: {c.status()}")
            await asyncio.sleep(0.01)
        return c

    async def run(c: Cluster, sets: list[frozenset[str]], callers: int) -> dict[frozenset[str], int]:
        got: dict[frozenset[str], int] = {}
        queue = list(sets)

        async def caller() -> None:
            while queue:
                labels = queue.pop()
                got[labels] = await c.allocate_identity(labels)

        await asyncio.gather(*(caller() for _ in range(callers)))
        return got

    nodes = [await node(k) for k in range(4)]
    try:
        out = {}
        t0 = time.monotonic()
        await run(nodes[0], [label_set("seq", k) for k in range(count)], 1)
        out["sequential"] = count / (time.monotonic() - t0)
        t0 = time.monotonic()
        await run(nodes[0], [label_set("conc", k) for k in range(count)], 16)
        out["concurrent"] = count / (time.monotonic() - t0)
        sets = [label_set("race", k) for k in range(count)]
        t0 = time.monotonic()
        results = await asyncio.gather(*(run(c, random.Random(k).sample(sets, len(sets)), 8) for k, c in enumerate(nodes)))
        out["contended"] = count / (time.monotonic() - t0)
        out["mismatches"] = sum(1 for s in sets if len({r[s] for r in results}) != 1)
        out["distinct_ids"] = len({r[s] for r in results for s in sets})
        return out
    finally:
        for c in nodes:
            await c.stop(revoke=True)
