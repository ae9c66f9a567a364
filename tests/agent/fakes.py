"""In-memory stand-ins for the agent's ports, for fast tests of the core.

The fake compiler understands a tiny JSON policy language (one file, a list
of {name, selector, allowFrom, port, l7}) and computes real CompiledState
values, so the agent core is exercised against the true contract types.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from pathlib import Path
from typing import Any

from agent.core.ports import (
    Allocations,
    ApplyOutcome,
    DatapathCounters,
    UpstreamPorts,
    MapFill,
    ProxyCounters,
    VerdictCounter,
    DumpedEntry,
    EndpointSpec,
    EndpointUnsupported,
    Failure,
    FamilySupport,
    KernelEndpoint,
    LoadedFile,
    PolicyProblem,
    ProxyRejected,
    ProxyTimeout,
)
from agent.core.cluster_ports import ClusterPeers, IdentityUnavailable
from policy.identity import identity_labels
from policy.compiled import (
    ALLOW_ALL_HTTP,
    IDENTITY_HOST,
    IDENTITY_WORLD,
    PROXY_PORT_MIN,
    RESERVED_IDENTITIES,
    CompiledState,
    Direction,
    EndpointPolicy,
    L7PeerRule,
    L7Policy,
    PolicyEntry,
    PolicyKey,
    PortRange,
    Protocol,
    RedirectKey,
    RuleRef,
    Verdict,
)


@dataclass(frozen=True)
class FakeDoc:
    """A parsed fake policy; like policy.model.Policy it is what the loader
    hands over and the compiler takes back (agent.core.ports.LoadedPolicy)."""

    name: str
    selector: tuple[tuple[str, str], ...]
    allow_from: tuple[tuple[str, str], ...]
    port: int
    l7: bool
    kind: str = "CiliumNetworkPolicy"

    @property
    def ref_name(self) -> str:
        return f"default/{self.name}"

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.ref_name}"


class FakeLoader:
    def __init__(self) -> None:
        self.loads: list[Path] = []

    def load_file(self, path: Path) -> LoadedFile:
        self.loads.append(path)
        try:
            docs = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            return LoadedFile(problems=(PolicyProblem(str(path), "", f"not JSON: {exc}"),))
        pols, probs = [], []
        for i, d in enumerate(docs):
            if not isinstance(d, dict) or not d.get("name"):
                probs.append(PolicyProblem(str(path), f"[{i}].name", "required"))
                continue
            if not isinstance(d.get("port", 80), int):
                probs.append(PolicyProblem(str(path), f"[{i}].port", "must be an integer", d["name"]))
                continue
            doc = FakeDoc(
                d["name"],
                tuple(sorted(d.get("selector", {}).items())),
                tuple(sorted(d.get("allowFrom", {}).items())),
                d.get("port", 80),
                bool(d.get("l7", False)),
            )
            pols.append(doc)
        return LoadedFile(tuple(pols), tuple(probs))


class FakeCompiler:
    def __init__(self, allocations: Allocations | None) -> None:
        self.policies: dict[str, FakeDoc] = {}
        self.endpoints: dict[int, EndpointSpec] = {}
        ids = (allocations.identities if allocations else None) or {}
        ports = (allocations.proxy_ports if allocations else None) or {}
        self.ids: dict[str, int] = dict(ids)
        self.ports: dict[str, int] = dict(ports)
        self.compiles = 0
        self.reject: set[str] = set()

    def _identity(self, labels: Mapping[str, str]) -> int:
        key = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        if key not in self.ids:
            self.ids[key] = 256 + len(self.ids)
        return self.ids[key]

    def _proxy_port(self, eid: int, port: int) -> int:
        key = f"{eid}/ingress/{port}"
        if key not in self.ports:
            self.ports[key] = PROXY_PORT_MIN + len(self.ports)
        return self.ports[key]

    def upsert_policy(self, policy: FakeDoc) -> None:
        if policy.name in self.reject:
            raise ValueError(f"{policy.ref_name}: rejected by the compiler")
        self.policies[policy.key] = policy

    def delete_policy(self, key: str) -> None:
        self.policies.pop(key, None)

    def upsert_endpoint(self, endpoint: EndpointSpec) -> int:
        self.endpoints[endpoint.endpoint_id] = endpoint
        if endpoint.identity is not None:  # cluster mode: the cluster's number
            key = ",".join(f"{k}={v}" for k, v in sorted(endpoint.labels.items()))
            self.ids[key] = endpoint.identity
        return self._identity(endpoint.labels)

    def delete_endpoint(self, endpoint_id: int) -> None:
        self.endpoints.pop(endpoint_id, None)

    def set_host_ips(self, ips) -> None:
        self.host_ips = frozenset(ips)

    def set_host(self, host) -> None:
        self.host = host

    def set_remote(self, endpoints, node_ips=(), node_labels=None, named_ports=None, changed=None, nodes_unchanged=False) -> None:
        if nodes_unchanged:
            self.remote = (dict(endpoints), self.remote[1])
            return
        self.remote = (dict(endpoints), frozenset(node_ips))
        self.node_labels = dict(node_labels or {})

    def set_node_labels(self, labels) -> None:
        self.own_node_labels = labels

    def allocations(self) -> Allocations:
        return Allocations(identities=dict(self.ids), proxy_ports=dict(self.ports))

    def labels_of_identity(self, identity: int) -> frozenset[str]:
        for key, i in self.ids.items():
            if i == identity:
                return frozenset(kv for kv in key.split(",") if kv)
        return frozenset()

    def identity_labels(self) -> Mapping[int, frozenset[str]]:
        out = {i: frozenset({f"reserved:{n}"}) for i, n in RESERVED_IDENTITIES.items()}
        for key, i in self.ids.items():
            out[i] = identity_labels(dict(kv.split("=", 1) for kv in key.split(",") if kv))
        return out

    def compile(self, revision: int) -> CompiledState:
        self.compiles += 1
        eps: dict[int, EndpointPolicy] = {}
        for eid, spec in self.endpoints.items():
            labels = dict(spec.labels)
            selecting = [p for p in self.policies.values() if all(labels.get(k) == v for k, v in p.selector)]
            entries: dict[PolicyKey, PolicyEntry] = {}
            l7: list[L7Policy] = []
            for p in sorted(selecting, key=lambda p: p.ref_name):
                doc: FakeDoc = p
                ref = RuleRef(p.kind, p.ref_name, "spec.ingress[0]")
                peers = [o for o in self.endpoints.values() if all(o.labels.get(k) == v for k, v in doc.allow_from)]
                for peer in peers:
                    key = PolicyKey(self._identity(peer.labels), Direction.INGRESS, Protocol.TCP, PortRange(doc.port, doc.port))
                    if doc.l7:
                        pp = self._proxy_port(eid, doc.port)
                        entries[key] = PolicyEntry(key, Verdict.REDIRECT, pp, (ref,))
                    else:
                        entries.setdefault(key, PolicyEntry(key, Verdict.ALLOW, 0, (ref,)))
                if doc.l7 and peers:
                    pp = self._proxy_port(eid, doc.port)
                    rule = L7PeerRule(frozenset(self._identity(x.labels) for x in peers), ALLOW_ALL_HTTP, (ref,))
                    l7.append(L7Policy(RedirectKey(eid, Direction.INGRESS, doc.port), pp, (rule,)))
            eps[eid] = EndpointPolicy(
                endpoint_id=eid,
                identity=self._identity(labels),
                ipv4=spec.ipv4,
                ingress_enforced=bool(selecting),
                egress_enforced=False,
                entries=tuple(sorted(entries.values(), key=lambda e: e.key)),
                l7=tuple(sorted(l7, key=lambda x: x.key)),
                selected_by=frozenset(p.ref_name for p in selecting),
            )
        ipcache: dict[IPv4Network, int] = {IPv4Network("0.0.0.0/0"): IDENTITY_WORLD, IPv4Network("127.0.0.1/32"): IDENTITY_HOST}
        for eid, spec in self.endpoints.items():
            if spec.ipv4 is not None:
                ipcache[IPv4Network(f"{spec.ipv4}/32")] = eps[eid].identity
        return CompiledState(revision, eps, ipcache, self.identity_labels())


def compiler_factory(store: list[FakeCompiler]):
    def make(allocations: Allocations | None) -> FakeCompiler:
        c = FakeCompiler(allocations)
        store.append(c)
        return c

    return make


class FakeDatapath:
    def __init__(self) -> None:
        self.setups = 0
        self.live_connections: set[tuple[str, str]] = set()  # what connections() reports
        self.attached: dict[int, tuple[str, IPv4Address | None, int]] = {}
        self.attached6: dict[int, IPv6Address | None] = {}
        self.detached: list[int] = []
        self.kernel: dict[int, dict[PolicyKey, tuple[Verdict, int]]] = {}
        self.writes: list[int] = []  # endpoints whose map content actually changed, per apply
        self.map_capacity: int | None = None
        self.fail_attach: set[int] = set()
        self.links_gone: set[str] = set()  # host interfaces that no longer exist
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        # What the kernel's per-CPU counters hold: (verdict, reason, direction) -> packets.
        self.verdict_counts: dict[tuple[str, str, str], int] = {}
        self.map_capacities: dict[str, int] = {"ciliate_ct": 65536, "ciliate_ipcache": 65536}
        self.map_entries: dict[str, int] = {}  # what the fake kernel's maps hold, by pin name
        self.upstream_ports: UpstreamPorts | None = None  # what the connect hook reports
        # As the kernel datapath on a node with IPv6: both families enforced.
        self.supported = (FamilySupport(4, True), FamilySupport(6, True))
        self.requires_ipv4 = False  # True: refuse an endpoint without IPv4 (a node with IPv6 disabled)

    async def setup(self) -> None:
        self.setups += 1

    def count(self, verdict: str, reason: str, direction: str, packets: int = 1) -> None:
        """Packets the fake kernel counted, as bpf/lib/events.h does."""
        key = (verdict, reason, direction)
        self.verdict_counts[key] = self.verdict_counts.get(key, 0) + packets

    async def connections(self) -> set[tuple[str, str]]:
        return set(self.live_connections)

    async def counters(self) -> DatapathCounters:
        verdicts = tuple(VerdictCounter(v, r, d, n) for (v, r, d), n in sorted(self.verdict_counts.items()))
        maps = [
            MapFill(name, self.map_entries.get(name, len(self.kernel) if name == "ciliate_lxc" else 0), cap)
            for name, cap in sorted(self.map_capacities.items())
        ]
        maps += [MapFill(f"ciliate_policy_{eid}", len(entries), self.map_capacity or 16384) for eid, entries in sorted(self.kernel.items())]
        return DatapathCounters(verdicts, tuple(maps), self.upstream_ports)

    async def close(self) -> None:
        self.closed = getattr(self, "closed", 0) + 1

    def families(self) -> tuple[FamilySupport, ...]:
        return self.supported

    async def attach_endpoint(
        self, endpoint_id: int, ifname: str, ipv4: IPv4Address | None, identity: int, ipv6: IPv6Address | None = None,
    ) -> None:
        if endpoint_id in self.fail_attach:
            raise OSError(f"no such device {ifname}")
        if ipv4 is None and self.requires_ipv4:
            raise EndpointUnsupported("no IPv4 address and IPv6 is disabled on this node")
        self.attached[endpoint_id] = (ifname, ipv4, identity)
        self.attached6[endpoint_id] = ipv6

    async def attached_endpoints(self) -> list[KernelEndpoint]:
        return [
            KernelEndpoint(eid, ifname, ipv4, ident, ifname not in self.links_gone, self.attached6.get(eid))
            for eid, (ifname, ipv4, ident) in sorted(self.attached.items())
        ]

    async def detach_endpoint(self, endpoint_id: int) -> None:
        self.detached.append(endpoint_id)
        self.attached.pop(endpoint_id, None)
        self.kernel.pop(endpoint_id, None)

    async def apply(self, state: CompiledState) -> ApplyOutcome:
        failed = {}
        for eid, ep in state.endpoints.items():
            want = ep.kernel_entries()
            if self.map_capacity is not None and len(want) > self.map_capacity:
                failed[eid] = Failure("map-full", f"policy map of endpoint {eid} holds {self.map_capacity} entries, {len(want)} needed")
                continue
            if self.kernel.get(eid) != want:
                self.kernel[eid] = want
                self.writes.append(eid)
        return ApplyOutcome(failed)

    async def dump_policy(self, endpoint_id: int) -> list[DumpedEntry]:
        return [
            DumpedEntry(k.identity, k.direction.name.lower(), k.protocol.name, str(k.ports), v.name.lower(), pp)
            for k, (v, pp) in sorted(self.kernel.get(endpoint_id, {}).items())
        ]

    async def flow_events(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            yield await self.events.get()


class FakeProxy:
    def __init__(self) -> None:
        self.mode = "ack"
        self.detail = "listener 'x': invalid regex"
        self.published: list[CompiledState] = []
        self.started = self.stopped = 0
        self.log: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.xds = ProxyCounters()

    async def start(self) -> None:
        self.started += 1

    async def stop(self) -> None:
        self.stopped += 1

    async def publish(self, state: CompiledState, timeout: float) -> str:
        self.published.append(state)
        if self.mode == "nack":
            raise ProxyRejected(self.detail)
        if self.mode == "timeout":
            raise ProxyTimeout(f"no ACK within {timeout}s")
        return str(len(self.published))

    def status(self) -> Mapping[str, Any]:
        return {"ok": True, "envoy": "fake", "published": len(self.published)}

    def counters(self) -> ProxyCounters:
        return self.xds

    async def access_log(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            yield await self.log.get()


class FakeShared:
    """The SharedState port in memory: a cluster allocator that numbers label
    sets from 1000, can be made unreachable, and peers the test sets."""

    def __init__(self) -> None:
        self.ids: dict[frozenset[str], int] = {}
        self.reachable = True
        self.published: dict = {}
        self._peers = ClusterPeers()
        self._on_change = None
        self.started = False

    async def start(self, on_change) -> None:
        self._on_change = on_change
        self.started = True

    async def stop(self) -> None:
        self.started = False

    async def identity_for(self, labels: frozenset[str]) -> int:
        if not self.reachable:
            raise IdentityUnavailable("etcd at http://192.0.2.1:2379 unreachable")
        return self.ids.setdefault(labels, 1000 + len(self.ids))

    async def publish(self, endpoints, named_ports=None) -> None:
        self.published = dict(endpoints)
        self.published_ports = dict(named_ports or {})

    node_labels: dict | None = None

    async def set_node_labels(self, labels) -> None:
        self.node_labels = dict(labels) if labels is not None else None

    def peers(self) -> ClusterPeers:
        return self._peers

    def changed_since(self, serial: int):
        return None  # always whole: the fake keeps no journal

    def set_peers(self, peers: ClusterPeers) -> None:
        self._peers = peers
        if self._on_change is not None:
            self._on_change()

    extra: dict = {}

    def status(self):
        return {"ok": self.reachable, "detail": "" if self.reachable else "etcd unreachable", **self.extra}
