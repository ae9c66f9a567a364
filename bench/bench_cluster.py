"""Cluster-scale benchmark: one real agent ("node B") following a large
simulated cluster through a real etcd, with no kernel and no Envoy.

What runs (every part a process of its own, so each one's RSS and CPU are its own):
  - etcd: Debian's /usr/bin/etcd (3.4), started by demo/etcd_process.py:
    single member on 127.0.0.1 with free ports and a private data directory
    under one temporary root; killed and the root removed on exit, also on
    an error, Ctrl-C or SIGTERM (and it gets SIGKILL from the kernel if this
    script dies: setpriv --pdeathsig).
  - a load generator: N simulated nodes x M pods written straight into etcd
    with kvstore's own key layout and encoders (kvstore/layout.py), so the
    agent under test takes them as real peers. Each simulated node has its
    own lease, a node record, M endpoint records (ip/v1/<ip>) and one
    identity reference per label set it runs (refs/<id>/<node>), all under
    its lease. Label sets are one per (namespace, app), 20 apps a
    namespace, about --pods-per-identity pods each (the replicas of a set
    sit on different nodes), created with the allocator's own create
    transaction ([version(id/N)==0, version(labels/L)==0] -> put both),
    batched. Later pod adds go through kvstore.identities.allocate() itself
    (get labels/L, then the hold or create transaction), as a node's agent
    would. Background churn: one pod event per 1/--churn s on the nodes that
    take no measured adds, alternating delete of a random pod and add of a
    pod of a label set that node already references (one key write each).
  - node B: a real Agent (agent.daemon.build_agent) with the real policy
    loader and compiler, a KvstoreState (kvstore.Cluster with its default
    lease/GC/timeouts) as shared state, a no-op routing, and the
    NullDatapath/NullProxy of bench_agent.py. Its policy directory holds 22
    policies that select remote pods' labels (per namespace ns0..ns9:
    app0 <- app1 on 8080, app2 <- the whole namespace on 9090; an L7 rule
    app0 <- app3 GET /v1/.* on 80; a clusterwide app2 <- app in {app4,app5}
    on 5432), and it runs 20 local pods those policies select, so remote
    identities cost selector and policy work, as in production.
  - baseline, same run: a single-node agent (no kvstore) with the same
    policies and local pods.
  - identity allocation: kvstore.Cluster instances on a fresh etcd.

Figures:
  - remote pod add -> B's compiled ipcache: t0 is taken by the load
    generator just before its first etcd call for the pod (the identity
    allocation when the node does not hold the label set's reference yet,
    else the ip put); t1 is when B's regenerator has published a state
    whose ipcache holds the /32 (a wrapper on Regenerator.on_report, called
    right after `last_state` is set). Both are CLOCK_MONOTONIC, shared by
    the processes. Open loop: --add-rate adds a second (gaps uniform in
    0.5..1.5 x the mean), whatever B's latency, so every N gets the same
    load and window; 1 in 4 with a new identity (a label set plus a new
    "version" label), while the churn runs. "etcd writes" is the load
    generator's own share (t0 -> its last write acknowledged).
  - local pod add -> own ipcache: Agent.create_endpoint (the CNI path) ->
    the same ipcache probe, for B (after the churn stopped) and for the
    single-node baseline; B's includes publishing the endpoint to etcd,
    which the regenerator does before it records the state.
  - memory: VmRSS from /proc/self/status of the agent's process (the agent
    runs in-process; etcd and the load generator are other processes),
    before agent start -> after the initial sync -> after the churn. Not
    tracemalloc: tracing would slow the agent several times and distort the
    latencies measured in the same run. "per remote pod" = delta / (N x M).
  - CPU: user+system seconds of the agent's process (all its threads, the
    compiler's worker thread included), os.times().
  - etcd keys per pod: count_only ranges per prefix after the population,
    divided by N x M; db bytes per pod from maintenance/status.
  - watch events: every event B's single watch delivered, counted by key
    kind by wrapping kvstore.mirror.Mirror.apply in this process (only B's
    Cluster lives in it); keys B listed at start from Mirror.reset.
  - initial sync: agent start -> B's ipcache holds all N x M remote /32s
    and its own pods.
  - identities/s: distinct label sets through Cluster.allocate_identity:
    one node sequentially; one node with 16 concurrent callers; 4 nodes x 8
    callers all allocating the same label sets (contention; it also checks
    that every node got the same number for each set).

"Cilium (published)" column (figures Cilium published; none of them is the
same experiment, the comment on each row says what it measured):
  [1] https://docs.cilium.io/en/stable/operations/performance/scalability/report/
      (CRD mode, not kvstore; 1000 nodes of 2 vCPU, 50,000 pods, 250
      identities): agent memory +10.5 KiB per pod in the cluster, 438 MiB
      average / 573 MiB max at 50k pods; agent CPU 3.38 % of 2 vCPU on
      average while scaling to 50k pods; under 600 ms for an endpoint to
      have a new policy enforced.
  [2] https://cilium.io/blog/2019/04/24/cilium-15/ (kvstore mode): 5k nodes,
      100k pods supported; etcd at about 700 MB per instance with 1k nodes
      and 60k pods.
  [3] https://docs.cilium.io/en/stable/internals/security-identities/:
      cluster-local identities 256..65535 (ciliate uses the same range).
No published figure was found for identity allocation rate, pod-add ->
remote ipcache latency, keys or watch events per pod, or initial sync
time: "n/a".

A script, not a test: prints a table, asserts nothing about time.
Run: .venv/bin/python bench/bench_cluster.py [--nodes 100,500] [--pods 50]
       [--pods-per-identity 10] [--churn 10] [--adds 200] [--add-rate 2]
       [--local-adds 30] [--alloc 300]            (about 5 min)
     .venv/bin/python bench/bench_cluster.py --quick   (smoke run, ~30 s)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import gc
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aetcd import transactions as tx  # noqa: E402

from agent.adapters.kvstore_state import KvstoreState  # noqa: E402
from agent.adapters.policy_compiler import PolicyFileLoader, make_compiler_factory  # noqa: E402
from agent.core.models import EndpointCreate  # noqa: E402
from agent.daemon import AgentConfig, build_agent  # noqa: E402
from bench.bench_agent import NullDatapath, NullProxy, pct  # noqa: E402
from demo.etcd_process import EtcdProcess, etcd_missing_reason  # noqa: E402
from kvstore import Cluster, NodeInfo, identities, layout, parse_kvstore_opts  # noqa: E402
from kvstore.etcd import Etcd  # noqa: E402
from kvstore.mirror import Mirror  # noqa: E402
from policy.endpoint import NAMESPACE_LABEL  # noqa: E402
from policy.identity import identity_labels  # noqa: E402

APPS_PER_NAMESPACE = 20
POLICY_NAMESPACES = 10  # ns0..ns9 carry policies; B runs app0 and app2 in each
SIM_LEASE_TTL = 3600  # the simulated nodes never keep their leases alive
TXN_OPS = 120  # etcd's --max-txn-ops is 128
NEW_IDENTITY_EVERY = 4  # 1 measured add in 4 brings a new label set
ADD_TIMEOUT = 60.0


# -- processes ----------------------------------------------------------------------


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the process that started it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def gateway(url: str, path: str, body: dict | None) -> dict:
    """etcd's JSON gateway (GET when body is None), never through an HTTP proxy."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=10) as r:
        return json.load(r)


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def count_keys(url: str, prefix: str) -> int:
    p = prefix.encode()
    end = p[:-1] + bytes([p[-1] + 1])
    return int(gateway(url, "/v3/kv/range", {"key": _b64(p), "range_end": _b64(end), "count_only": True}).get("count", 0))


def db_size(url: str) -> int:
    return int(gateway(url, "/v3/maintenance/status", {}).get("dbSize", 0))


def rss_kib() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in KiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out["VmRSS"], out["VmHWM"]


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


# -- the simulated cluster -------------------------------------------------------------


class Geometry:
    """Who runs where: node i has pod CIDR 10.128.0.0 + i*256 /24, pods on .2 upwards;
    pod j of node i belongs to label set (i // per_identity) * pods + j."""

    SLOTS = 253  # .2 .. .254

    def __init__(self, nodes: int, pods: int, per_identity: int, adds: int) -> None:
        if not 1 <= pods <= 200:
            raise SystemExit("--pods must be 1..200 (one /24 per node, the rest is room for the adds and churn)")
        self.nodes, self.pods, self.per = nodes, pods, per_identity
        self.n_sets = math.ceil(nodes / per_identity) * pods
        self.add_nodes = max(1, math.ceil(adds / (self.SLOTS - pods)))
        if nodes <= self.add_nodes:
            raise SystemExit(f"--nodes must be above {self.add_nodes} (nodes taking the measured adds; churn uses the rest)")
        self.b = NodeInfo(name="node-b", ip=IPv4Address("172.31.255.254"), pod_cidr=IPv4Network("10.127.255.0/24"))

    @staticmethod
    def name(i: int) -> str:
        return f"sim-{i:04d}"

    def info(self, i: int) -> NodeInfo:
        cidr = IPv4Network((int(IPv4Address("10.128.0.0")) + (i << 8), 24))
        return NodeInfo(name=self.name(i), ip=IPv4Address(int(IPv4Address("172.16.0.1")) + i), pod_cidr=cidr)

    @staticmethod
    def ip(i: int, slot: int) -> IPv4Address:
        return IPv4Address(int(IPv4Address("10.128.0.2")) + (i << 8) + slot)

    def set_of(self, i: int, j: int) -> int:
        return (i // self.per) * self.pods + j

    @staticmethod
    def labels(s: int) -> frozenset[str]:
        ns, app = divmod(s, APPS_PER_NAMESPACE)
        return identity_labels({"app": f"app{app}", NAMESPACE_LABEL: f"ns{ns}"})

    def remote_nets(self) -> list[IPv4Network]:
        return [IPv4Network(f"{self.ip(i, j)}/32") for i in range(self.nodes) for j in range(self.pods)]


def _chunks(items: list, n: int) -> Iterable[list]:
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


class LoadGenClient:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._lock = asyncio.Lock()  # one request on the pipe at a time

    @classmethod
    async def start(cls, a: argparse.Namespace, url: str) -> LoadGenClient:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--role", "loadgen", "--etcd", url, "--nodes-one", str(a.nodes_one),
            "--pods", str(a.pods), "--pods-per-identity", str(a.pods_per_identity), "--adds", str(a.adds),
            "--seed", str(a.seed),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, preexec_fn=_die_with_parent, limit=1 << 20,
        )
        return cls(proc)

    async def ask(self, **cmd) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        async with self._lock:
            self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
            await self.proc.stdin.drain()
            line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator exited ({await self.proc.wait()}) on {cmd['cmd']}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"load generator: {cmd['cmd']}: {reply['error']}")
        return reply

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ask(cmd="quit")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.proc.wait(), 10)
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


# -- the agent under test ------------------------------------------------------------------

EVENTS: Counter = Counter()
LISTED: Counter = Counter()
LIST_DONE: list[float] = []  # monotonic time of each relist (Mirror.reset)
_KINDS = (
    (layout.prefix(layout.IPS), "ip"),
    (layout.prefix(layout.REFS), "ref"),
    (layout.prefix(layout.IDS), "id"),
    (layout.prefix(layout.LABELS), "labels"),
    (layout.prefix(layout.NODES), "node"),
)


def _kind(key: bytes) -> str:
    return next((k for p, k in _KINDS if key.startswith(p)), "other")


def count_watch_events() -> None:
    """Count what the (one) Cluster in this process receives: listed keys and watch events."""
    apply, reset = Mirror.apply, Mirror.reset

    def counting_apply(self, deleted, key, *args, **kwargs):
        EVENTS[_kind(key) + (" del" if deleted else "")] += 1
        return apply(self, deleted, key, *args, **kwargs)

    def counting_reset(self, kvs, *args, **kwargs):
        kvs = list(kvs)
        for key, *_ in kvs:
            LISTED[_kind(key)] += 1
        change = reset(self, kvs, *args, **kwargs)
        LIST_DONE.append(time.monotonic())
        return change

    Mirror.apply, Mirror.reset = counting_apply, counting_reset


class NoRouting:
    async def setup(self) -> None: ...
    async def set_routes(self, nodes) -> None: ...


class IpcacheProbe:
    """Resolves waiters when the regenerator's last_state.ipcache holds all their /32s."""

    def __init__(self, agent) -> None:
        self.agent = agent
        self.reports = 0
        self._waiters: list[tuple[set[IPv4Network], asyncio.Future]] = []
        regen = agent.regenerator
        inner = regen.on_report

        def on_report(report) -> None:
            if inner is not None:
                inner(report)
            self.reports += 1
            self._check()

        regen.on_report = on_report

    def wait_for(self, nets: Iterable[IPv4Network]) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((set(nets), fut))
        self._check()
        return fut

    def _check(self) -> None:
        state = self.agent.regenerator.last_state
        if state is None or not self._waiters:
            return
        now, ipcache, keep = time.monotonic(), state.ipcache, []
        for nets, fut in self._waiters:
            nets.difference_update([n for n in nets if n in ipcache])
            if nets:
                keep.append((nets, fut))
            elif not fut.done():
                fut.set_result(now)
        self._waiters = keep


def _policy(kind: str, name: str, ns: str | None, spec: str) -> str:
    meta = f"{{name: {name}, namespace: {ns}}}" if ns else f"{{name: {name}}}"
    return f"apiVersion: cilium.io/v2\nkind: {kind}\nmetadata: {meta}\nspec:\n{spec}"


def write_policies(d: Path) -> int:
    d.mkdir(parents=True)
    docs = {}
    for k in range(POLICY_NAMESPACES):
        docs[f"l3l4-ns{k}"] = _policy("CiliumNetworkPolicy", "app0-from-app1", f"ns{k}", (
            "  endpointSelector: {matchLabels: {app: app0}}\n"
            "  ingress:\n  - fromEndpoints: [{matchLabels: {app: app1}}]\n"
            '    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]\n'))
        docs[f"nswide-ns{k}"] = _policy("CiliumNetworkPolicy", "app2-from-namespace", f"ns{k}", (
            "  endpointSelector: {matchLabels: {app: app2}}\n"
            "  ingress:\n  - fromEndpoints: [{}]\n"
            '    toPorts: [{ports: [{port: "9090", protocol: TCP}]}]\n'))
    docs["l7-ns0"] = _policy("CiliumNetworkPolicy", "app0-l7-from-app3", "ns0", (
        "  endpointSelector: {matchLabels: {app: app0}}\n"
        "  ingress:\n  - fromEndpoints: [{matchLabels: {app: app3}}]\n"
        '    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: "/v1/.*"}]}}]\n'))
    docs["ccnp-db"] = _policy("CiliumClusterwideNetworkPolicy", "app2-from-app4-app5", None, (
        "  endpointSelector: {matchLabels: {app: app2}}\n"
        "  ingress:\n  - fromEndpoints: [{matchExpressions: [{key: app, operator: In, values: [app4, app5]}]}]\n"
        '    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]\n'))
    for name, text in docs.items():
        (d / f"{name}.yaml").write_text(text)
    return len(docs)


def local_pods(cidr: IPv4Network) -> list[EndpointCreate]:
    out = []
    for k in range(POLICY_NAMESPACES):
        for app in ("app0", "app2"):
            n = len(out)
            out.append(EndpointCreate(
                container_id=f"local-{n}", host_ifname=f"lxcl{n}", ipv4=cidr.network_address + 2 + n,
                labels={"app": app, NAMESPACE_LABEL: f"ns{k}"}, name=f"ns{k}/{app}-{n}",
            ))
    return out


async def local_add_latencies(agent, probe: IpcacheProbe, cidr: IPv4Network, count: int) -> list[float]:
    """Agent.create_endpoint (the CNI path) -> own compiled ipcache has the /32; an existing label set."""
    rng, out = random.Random(7), []
    for k in range(count):
        ip = cidr.network_address + 100 + k
        fut = probe.wait_for([IPv4Network(f"{ip}/32")])
        t0 = time.monotonic()
        await agent.create_endpoint(
            EndpointCreate(container_id=f"add-{k}", host_ifname=f"lxca{k}", ipv4=ip, labels={"app": "app0", NAMESPACE_LABEL: "ns0"}),
            None,
        )
        out.append(await asyncio.wait_for(fut, ADD_TIMEOUT) - t0)
        await asyncio.sleep(rng.uniform(0, 0.02))
    return out


def regen_stats(agent) -> tuple[float, float]:
    reg, name = agent.metrics.registry, "ciliate_endpoint_regeneration_time_stats_seconds"
    return (reg.get_sample_value(name + "_count", {"scope": "total"}) or 0.0, reg.get_sample_value(name + "_sum", {"scope": "total"}) or 0.0)


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
        agent = build_agent(
            AgentConfig(state_dir=tmp / "state", policy_dir=tmp / "policies", metrics_port=None, poll_interval=3600.0),
            compiler_factory=make_compiler_factory(), loader=PolicyFileLoader(),
            datapath=NullDatapath(), proxy=NullProxy(), shared=shared, routing=NoRouting(),
        )
        t_start = time.monotonic()
        await agent.start(serve_api=False)
        try:
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
    agent = build_agent(
        AgentConfig(state_dir=tmp / "state", policy_dir=tmp / "policies", metrics_port=None, poll_interval=3600.0),
        compiler_factory=make_compiler_factory(), loader=PolicyFileLoader(), datapath=NullDatapath(), proxy=NullProxy(),
    )
    t_start = time.monotonic()
    await agent.start(serve_api=False)
    try:
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


# -- the orchestrator -------------------------------------------------------------------------


def run_child(role: str, a: argparse.Namespace, root: Path, timeout: float, **extra) -> dict:
    """Run this script in `role`; its last stdout line is 'RESULT <json>'."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{role}-", dir=root))
    cmd = [sys.executable, __file__, "--role", role, "--tmp", str(tmp), "--pods", str(a.pods),
           "--pods-per-identity", str(a.pods_per_identity), "--churn", str(a.churn), "--adds", str(a.adds),
           "--local-adds", str(a.local_adds), "--add-rate", str(a.add_rate), "--alloc", str(a.alloc), "--seed", str(a.seed),
           "--sync-timeout", str(a.sync_timeout)]
    for k, v in extra.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT, preexec_fn=_die_with_parent)
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{role} child failed (exit {proc.returncode}); see its stderr above")
    return json.loads(lines[-1][len("RESULT "):])


def child_main(a: argparse.Namespace) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator stops us (and etcd) on Ctrl-C
    if a.role == "loadgen":
        return asyncio.run(loadgen_main(a))
    fn = {"cluster": cluster_main, "baseline": baseline_main, "alloc": alloc_main}[a.role]
    result = asyncio.run(fn(a))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", help="comma-separated simulated node counts, one scenario each (default 100,500; --quick: 10)")
    ap.add_argument("--pods", type=int, default=50, help="pods per simulated node (M)")
    ap.add_argument("--pods-per-identity", type=int, default=10)
    ap.add_argument("--churn", type=float, default=10.0, help="background pod events per second")
    ap.add_argument("--adds", type=int, default=200, help="measured remote pod adds per scenario")
    ap.add_argument("--add-rate", type=float, default=2.0, help="measured adds per second (open loop, on top of the churn)")
    ap.add_argument("--local-adds", type=int, default=30, help="measured local pod adds (B and baseline)")
    ap.add_argument("--alloc", type=int, default=300, help="label sets per identity-allocation series")
    ap.add_argument("--quick", action="store_true", help="smoke run: 10 nodes x 10 pods, few adds")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sync-timeout", type=float, default=300.0)
    # internal: the child roles
    ap.add_argument("--role", choices=("loadgen", "cluster", "baseline", "alloc"), help=argparse.SUPPRESS)
    ap.add_argument("--etcd", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    ap.add_argument("--nodes-one", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.role:
        return child_main(a)
    if a.quick:
        a.nodes, a.pods, a.adds, a.add_rate, a.local_adds, a.alloc, a.churn = a.nodes or "10", 10, 20, 5.0, 10, 30, 5.0
    a.nodes = a.nodes or "100,500"
    if (missing := etcd_missing_reason()) is not None:
        print(missing)
        return 1
    node_counts = [int(x) for x in a.nodes.split(",") if x.strip()]

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored
    root = Path(tempfile.mkdtemp(prefix="ciliate-bench-cluster-"))
    try:
        scen = []
        for n in node_counts:
            with EtcdProcess(root) as etcd:
                scen.append(run_child("cluster", a, root, timeout=900, etcd=etcd.client_url, nodes_one=n))
                scen[-1]["etcd_rss_kib"] = proc_rss_kib(etcd.proc.pid)
        print("  single-node baseline", file=sys.stderr, flush=True)
        base = run_child("baseline", a, root, timeout=300)
        print("  identity allocation", file=sys.stderr, flush=True)
        with EtcdProcess(root) as etcd:
            alloc = run_child("alloc", a, root, timeout=600, etcd=etcd.client_url)
        print_report(a, scen, base, alloc)
        return 0
    except KeyboardInterrupt:
        print("interrupted; etcd stopped and temporary files removed", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
