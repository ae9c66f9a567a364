"""The load generator (the "loadgen" role): writes the simulated nodes into
etcd with kvstore's own key layout and encoders, so the agent under test
takes them as real peers. A process of its own, so its CPU and memory are
not the agent's; it takes JSON-line commands on stdin (loadgen_client.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from collections.abc import Iterable
from ipaddress import IPv4Address
from typing import TypeVar

from aetcd import transactions as tx

from bench.cluster.geometry import Geometry
from kvstore import identities, layout, parse_kvstore_opts
from kvstore.etcd import Etcd

SIM_LEASE_TTL = 3600  # the simulated nodes never keep their leases alive
TXN_OPS = 120  # etcd's --max-txn-ops is 128

T = TypeVar("T")


def _chunks(items: list[T], n: int) -> Iterable[list[T]]:
    for k in range(0, len(items), n):
        yield items[k : k + n]


class LoadGen:
    """Writes the simulated nodes into etcd; driven by JSON lines on stdin."""

    def __init__(self, url: str, geo: Geometry, seed: int) -> None:
        self.etcd = Etcd(parse_kvstore_opts([f"etcd.endpoints={url}"]), op_timeout=60.0)
        self.geo = geo
        self.rng = random.Random(seed)
        self.leases: dict[int, int] = {}
        self.pods: dict[int, dict[IPv4Address, frozenset[str]]] = {}
        self.free: dict[int, list[IPv4Address]] = {}
        self.held: dict[int, dict[frozenset[str], int]] = {}
        self.known: set[int] = set()
        self.versions = 0
        self.churn_task: asyncio.Task | None = None
        self.churn_ops = 0
        self.churn_lag = 0.0
        self._churn_t0 = 0.0

    async def populate(self) -> dict:
        g, t0 = self.geo, time.monotonic()
        sem = asyncio.Semaphore(16)

        async def grant(i: int) -> None:
            async with sem:
                lease = await self.etcd.call("granting a lease", lambda c: c.lease(SIM_LEASE_TTL))
                self.leases[i] = lease.id

        await asyncio.gather(*(grant(i) for i in range(g.nodes)))
        ids = self.rng.sample(range(layout.ID_MIN, layout.ID_MAX + 1), g.n_sets)
        self.known.update(ids)
        # The allocator's create transaction, many label sets per transaction.
        for batch in _chunks(list(range(g.n_sets)), TXN_OPS // 2):
            compare, success = [], []
            for s in batch:
                labels, idk = g.labels(s), layout.id_key(ids[s])
                compare += [tx.Version(idk) == 0, tx.Version(layout.labels_key(labels)) == 0]
                success += [tx.Put(idk, layout.labels_value(labels)), tx.Put(layout.labels_key(labels), layout.identity_value(ids[s]))]
            ok, _ = await self.etcd.call("creating identities", lambda c: c.transaction(compare=compare, success=success, failure=[]))
            if not ok:
                raise RuntimeError("identity create transaction failed on a fresh etcd")

        async def node(i: int) -> None:
            name, lease = g.name(i), self.leases[i]
            self.pods[i], self.held[i] = {}, {}
            ops = [tx.Put(layout.node_key(name), layout.node_value(g.info(i)), lease=lease)]
            for j in range(g.pods):
                s = g.set_of(i, j)
                labels, ident, ip = g.labels(s), ids[s], g.ip(i, j)
                ops.append(tx.Put(layout.ip_key(ip), layout.ip_value(ident, name), lease=lease))
                self.pods[i][ip] = labels
                if labels not in self.held[i]:
                    ops.append(tx.Put(layout.ref_key(ident, name), b"", lease=lease))
                    self.held[i][labels] = ident
            self.free[i] = [g.ip(i, slot) for slot in range(g.pods, g.SLOTS)]
            async with sem:
                for chunk in _chunks(ops, TXN_OPS):
                    await self.etcd.call("writing a node", lambda c, chunk=chunk: c.transaction(compare=[], success=chunk, failure=[]))

        await asyncio.gather(*(node(i) for i in range(g.nodes)))
        return {"seconds": time.monotonic() - t0, "identities": g.n_sets, "pods": g.nodes * g.pods}

    async def add(self, i: int, ip: IPv4Address, new: bool) -> dict:
        """One pod on node i, as its agent would: reference the identity
        (allocate it if new), then publish the endpoint."""
        g, name, lease = self.geo, self.geo.name(i), self.leases[i]
        labels = g.labels(self.rng.randrange(g.n_sets))
        if new:
            self.versions += 1
            labels = labels | {f"k8s:version=v{self.versions}"}
        t0 = time.monotonic()
        ident = self.held[i].get(labels)
        path = "held"
        if ident is None:
            path = "new" if new else "ref"
            ident = await identities.allocate(self.etcd, labels, name, lease, frozenset(self.known), self.rng)
            self.known.add(ident)
            self.held[i][labels] = ident
        await self.etcd.call("publishing an endpoint", lambda c: c.put(layout.ip_key(ip), layout.ip_value(ident, name), lease=lease))
        t_put = time.monotonic()
        self.pods[i][ip] = labels
        with contextlib.suppress(ValueError):
            self.free[i].remove(ip)
        return {"t0": t0, "t_put": t_put, "path": path, "identity": ident}

    async def _churn_once(self, k: int, nodes: list[int]) -> None:
        g = self.geo
        if k % 2:
            i = self.rng.choice([n for n in nodes if self.pods[n]] or nodes)
            ip = self.rng.choice(list(self.pods[i]))
            await self.etcd.call("deleting an endpoint", lambda c: c.delete(layout.ip_key(ip)))
            del self.pods[i][ip]
            self.free[i].append(ip)
        else:
            i = self.rng.choice([n for n in nodes if self.free[n]] or nodes)
            ip = self.free[i].pop(self.rng.randrange(len(self.free[i])))
            labels, ident = self.rng.choice(list(self.held[i].items()))
            await self.etcd.call(
                "publishing an endpoint",
                lambda c: c.put(layout.ip_key(ip), layout.ip_value(ident, g.name(i)), lease=self.leases[i]),
            )
            self.pods[i][ip] = labels

    async def _churn(self, rate: float) -> None:
        nodes = list(range(self.geo.add_nodes, self.geo.nodes))
        start, k = time.monotonic(), 0
        while True:
            k += 1
            delay = start + k / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                self.churn_lag = max(self.churn_lag, -delay)
            await self._churn_once(k, nodes)
            self.churn_ops += 1

    async def handle(self, cmd: dict) -> dict:
        what = cmd["cmd"]
        if what == "populate":
            return await self.populate()
        if what == "add":
            return await self.add(cmd["node"], IPv4Address(cmd["ip"]), cmd["new"])
        if what == "churn_start":
            self.churn_ops, self.churn_lag = 0, 0.0
            self._churn_t0 = time.monotonic()
            self.churn_task = asyncio.create_task(self._churn(cmd["rate"]))
            return {}
        if what == "churn_stop":
            assert self.churn_task is not None
            self.churn_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.churn_task
            return {"ops": self.churn_ops, "seconds": time.monotonic() - self._churn_t0, "max_lag": self.churn_lag}
        raise ValueError(f"unknown command {what!r}")


async def loadgen_main(a: argparse.Namespace) -> int:
    lg = LoadGen(a.etcd, Geometry(a.nodes_one, a.pods, a.pods_per_identity, a.adds), a.seed)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            cmd = json.loads(line)
            if cmd["cmd"] == "quit":
                break
            try:
                reply = await lg.handle(cmd)
            except Exception as e:  # reported to the driver, which fails the run
                reply = {"error": f"{type(e).__name__}: {e}"}
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
    finally:
        await lg.etcd.close()
    return 0
