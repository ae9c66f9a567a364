"""The first step of a regeneration: tell the compiler what changed and compile.

Compiling can take seconds (20k toCIDR prefixes), so every call into the
compiler runs in a worker thread (`offload`) while the event loop keeps
serving the API: the loop snapshots the inputs (policy book, endpoint
records), one thread applies them and compiles, and the loop adopts the
result. Only this step calls the compiler and the regenerator awaits each
job, so the compiler is never touched by two threads at once; API reads such
as identity_labels() see the last immutable CompiledState.

It owns what the compiler has been given (policies, endpoints, host
addresses, this node's labels), the compiler's refusals and the saving of
its allocations.

This node's labels (what nodeSelector and fromNodes/toNodes match): its
Node object's labels when the cluster source knows the Node, with each
`--node-label` added over them (a flag wins over the Node's label of the
same key); without a known Node, the flags alone. Both the host endpoint's
labels and the compiler's node labels follow that rule, and follow a
relabelled Node at run time.

I/O only through the PolicyCompiler port and the `save_allocations` callback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from agent.core.cluster_sync import node_ips, node_labels
from agent.core.endpoint_table import EndpointTable
from agent.core.l7_view import l7_view
from agent.core.models import EndpointRecord, EndpointState
from agent.core.policy_book import BookEntry, PolicyBook
from agent.core.ports import (
    Allocations,
    EndpointSpec,
    HostEndpoint,
    PolicyCompiler,
)
from agent.core.cluster_ports import ClusterPeers
from agent.core.regeneration_queue import Batch
from policy.compiled import HOST_ENDPOINT_ID, CompiledState, EndpointPolicy, Protocol

log = logging.getLogger(__name__)

Offload = Callable[..., Awaitable[Any]]


def with_audit(state: CompiledState, audited: frozenset[int]) -> CompiledState:
    """`state` with these endpoints in policy audit mode (the compiler knows
    nothing of it: it is the endpoint's setting, not policy)."""
    if not audited & state.endpoints.keys():
        return state
    endpoints = {i: replace(ep, audit=True) if i in audited else ep for i, ep in state.endpoints.items()}
    return replace(state, endpoints=endpoints)


@dataclass(frozen=True, slots=True)
class CompileJob:
    """What the compiler is told in one regeneration, snapshotted on the loop."""

    revision: int
    host_ips: frozenset[IPv4Address | IPv6Address] | None
    deleted_policies: tuple[str, ...]
    upserted_policies: tuple[tuple[str, BookEntry], ...]
    endpoints: tuple[tuple[int, EndpointSpec | None], ...]  # None: the record is gone
    in_compiler: frozenset[int]
    audited: frozenset[int] = frozenset()  # endpoints in policy audit mode
    remote: ClusterPeers | None = None  # cluster mode: the rest of the cluster, when it changed
    host: HostEndpoint | None = None  # the node as an endpoint, with its labels now
    node_labels: Mapping[str, str] | None = None  # this node's labels now


@dataclass(slots=True)
class CompileResult:
    """What the worker thread hands back; the loop adopts it."""

    accepted: dict[str, BookEntry] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    identities: dict[int, int] = field(default_factory=dict)
    removed: set[int] = field(default_factory=set)
    state: CompiledState | None = None
    error: Exception | None = None
    allocations: Allocations | None = None  # None: unchanged since the last save
    changed: set[int] = field(default_factory=set)  # endpoints whose policy differs from the realized one
    view: tuple = ()


class CompileStep:
    def __init__(
        self,
        *,
        compiler: PolicyCompiler,
        table: EndpointTable,
        book: PolicyBook,
        save_allocations: Callable[[Allocations], None],
        host_ips: Callable[[], Iterable[IPv4Address | IPv6Address]] | None = None,
        policy_audit_mode: bool = False,
        host: HostEndpoint | None = None,
        host_audit_mode: bool = False,
        node_labels: Mapping[str, str] | None = None,
    ) -> None:
        """`policy_audit_mode`: the agent-wide default of endpoints whose record
        does not say (EndpointRecord.policy_audit_mode None). `host`: the node
        is an endpoint too (host policies); `host_audit_mode` audits its policy."""
        self.compiler = compiler
        self._host = host  # its labels: `--node-label`'s
        self._flag_labels = dict(node_labels) if node_labels is not None else None
        self._cluster_labels: dict[str, str] | None = None  # the Node's, once the cluster source knows it
        self.host_audit_mode = host_audit_mode or policy_audit_mode
        self.table = table
        self.book = book
        self.policy_audit_mode = policy_audit_mode
        self._save_allocations = save_allocations
        self._host_ips = host_ips
        self.compile_errors: dict[str, str] = {}
        self._given: dict[str, BookEntry] = {}
        self._in_compiler: set[int] = set()
        self._saved_alloc: Allocations | None = None
        self._known_host_ips: frozenset[IPv4Address | IPv6Address] | None = None
        # The serial of the cluster peers the compiler holds (0: none, or a
        # set_remote that did not finish): a delta applies only on top of it.
        self._remote_serial = 0
        self._remote_nodes: object | None = None  # the peers' node map last given to the compiler
        # How blocking work leaves the event loop (the compiler, the
        # allocation save). A worker thread; bench/bench_cidr.py swaps in an
        # inline call to measure the old on-loop behaviour as its baseline.
        self.offload: Offload = asyncio.to_thread

    def set_cluster_node_labels(self, labels: Mapping[str, str] | None) -> bool:
        """This node's labels as the cluster source has them (None: it knows
        no Node); True when that changes what the compiler is to be told."""
        new = dict(labels) if labels is not None else None
        if new == self._cluster_labels:
            return False
        before = (self.node_labels, self.host)
        self._cluster_labels = new
        return (self.node_labels, self.host) != before

    def _with_cluster(self, flags: Mapping[str, str] | None) -> Mapping[str, str] | None:
        if self._cluster_labels is None:
            return flags
        return {**self._cluster_labels, **(flags or {})}

    @property
    def node_labels(self) -> Mapping[str, str] | None:
        """This node's labels (fromNodes/toNodes; published in cluster mode)."""
        return self._with_cluster(self._flag_labels)

    @property
    def host(self) -> HostEndpoint | None:
        """The node as an endpoint, with the labels its nodeSelector matches."""
        if self._host is None or self._cluster_labels is None:
            return self._host
        return replace(self._host, labels=self._with_cluster(self._host.labels))

    @property
    def given(self) -> Mapping[str, BookEntry]:
        """The book entries the compiler holds (the ones it accepted)."""
        return self._given

    def holds(self, endpoint_id: int) -> bool:
        """Whether the compiler has this endpoint (it gave it an identity)."""
        return endpoint_id in self._in_compiler

    async def compile(
        self,
        batch: Batch,
        host_ips: frozenset[IPv4Address | IPv6Address] | None,
        identities: Mapping[int, int],
        waiting: Mapping[int, str],
        remote: ClusterPeers | None,
        realized: Mapping[int, EndpointPolicy],
    ) -> CompileResult:
        """Snapshot the inputs on the loop, compile in the worker thread, adopt
        the result back on the loop. `realized`: what the kernel holds, to
        tell which endpoints changed (read in the thread while the caller
        awaits; nobody writes it meanwhile)."""
        job = self._job(batch, host_ips, identities, waiting, remote)
        res: CompileResult = await self.offload(self._compile, job, realized)
        self._adopt(job, res)
        return res

    # --- inputs into the compiler: snapshot on the loop, apply in the thread ---
    def _job(
        self,
        batch: Batch,
        host_ips: frozenset[IPv4Address | IPv6Address] | None,
        identities: Mapping[int, int] | None = None,
        waiting: Mapping[int, str] | None = None,
        remote: ClusterPeers | None = None,
    ) -> CompileJob:
        deleted: tuple[str, ...] = ()
        upserted: tuple[tuple[str, BookEntry], ...] = ()
        if batch.policy_changed:
            in_force = self.book.in_force()
            deleted = tuple(k for k in self._given if k not in in_force)
            for key in [k for k in self.compile_errors if k not in in_force]:
                del self.compile_errors[key]
            upserted = tuple((k, e) for k, e in in_force.items() if self._given.get(k) is not e)
        endpoints = []
        for eid in sorted(batch.endpoints):
            if waiting and eid in waiting:
                continue  # no identity yet: the compiler keeps what it had (or nothing)
            rec = self.table.record(eid)
            ident = identities.get(eid) if identities else None
            endpoints.append((eid, None if rec is None else EndpointSpec(eid, dict(rec.labels), rec.ipv4, ident, rec.ipv6, named_ports_of(rec))))
        audited = frozenset(i for i in self.table.ids() if self.audits(i))
        if self.host is not None and self.host_audit_mode:
            audited |= {HOST_ENDPOINT_ID}
        return CompileJob(
            batch.revision, host_ips, deleted, upserted, tuple(endpoints), frozenset(self._in_compiler), audited, remote,
            self.host, self.node_labels,
        )

    def audits(self, endpoint_id: int) -> bool:
        """Whether this endpoint's policy is audited: its own setting, else the agent's."""
        rec = self.table.record(endpoint_id)
        if rec is None:
            return False
        return self.policy_audit_mode if rec.policy_audit_mode is None else rec.policy_audit_mode

    def _compile(self, job: CompileJob, realized: Mapping[int, EndpointPolicy]) -> CompileResult:
        """Runs in the worker thread: the only place the compiler is called."""
        out = CompileResult()
        c = self.compiler
        c.set_host(job.host)  # the same as last time: a no-op
        c.set_node_labels(job.node_labels)
        if job.host_ips is not None:
            c.set_host_ips(job.host_ips)
        if job.remote is not None:
            r = job.remote
            changed = r.changed if r.changed is not None and r.base and r.base == self._remote_serial else None
            self._remote_serial = 0
            # Nodes come and go far less often than pods: the same node map
            # object as last time is not walked again.
            same_nodes = changed is not None and r.nodes is self._remote_nodes
            if same_nodes:
                c.set_remote(r.endpoints, (), None, r.named_ports, changed=changed, nodes_unchanged=True)
            else:
                c.set_remote(r.endpoints, node_ips(r), node_labels(r), r.named_ports, changed=changed)
            self._remote_serial, self._remote_nodes = r.serial, r.nodes
        for key in job.deleted_policies:
            c.delete_policy(key)
        for key, entry in job.upserted_policies:
            try:
                c.upsert_policy(entry.policy)
            except Exception as exc:  # the compiler's own validation: keep the rest
                out.rejected[key] = str(exc) or type(exc).__name__
                log.warning("policy %s rejected by the compiler: %s", key, exc)
                continue
            out.accepted[key] = entry
        for eid, spec in job.endpoints:
            if spec is None:
                if eid in job.in_compiler:
                    c.delete_endpoint(eid)
                out.removed.add(eid)
            else:
                out.identities[eid] = c.upsert_endpoint(spec)
        try:
            state = c.compile(job.revision)
        except Exception as exc:
            log.exception("policy compilation failed")
            out.error = exc
            return out
        state = with_audit(state, job.audited)
        out.state = state
        alloc = c.allocations()
        out.allocations = alloc if alloc != self._saved_alloc else None
        # The compiler hands back the same object for an unchanged endpoint: `is` first.
        out.changed = {i for i, ep in state.endpoints.items() if (old := realized.get(i)) is not ep and old != ep}
        out.view = l7_view(state)
        return out

    def _adopt(self, job: CompileJob, res: CompileResult) -> None:
        """Back on the loop: record what the compiler accepted and the identities it gave."""
        for key in job.deleted_policies:
            self._given.pop(key, None)
        for key, msg in res.rejected.items():
            self.compile_errors[key] = msg
        for key, entry in res.accepted.items():
            self.compile_errors.pop(key, None)
            self._given[key] = entry
        for eid in res.removed:
            self._in_compiler.discard(eid)
        for eid, identity in res.identities.items():
            self._in_compiler.add(eid)
            live = self.table.live(eid)
            # One program serves every endpoint and apply() writes the identity into
            # the lxc map; but the datapath's own record of the endpoint (read back
            # by endpoint_restore.py when endpoints.json is lost) holds the identity
            # attach wrote, so a new identity means re-attach to keep it true.
            reattach = live is not None and live.attached and live.identity not in (None, identity)
            self.table.set_live(eid, identity=identity, state=EndpointState.REGENERATING, reason=None, **({"attached": False} if reattach else {}))

    async def persist_allocations(self, alloc: Allocations | None) -> None:
        if alloc is None:
            return
        await self.offload(self._save_allocations, alloc)  # JSON + fsync of every CIDR identity
        self._saved_alloc = alloc

    async def new_host_ips(self, batch: Batch) -> frozenset[IPv4Address | IPv6Address] | None:
        """The host's addresses when they differ from what the compiler has, else None."""
        # New endpoints may bring new host addresses (their gateway on ciliate_host).
        if not (batch.endpoints or self._known_host_ips is None) or self._host_ips is None:
            return None
        try:
            ips = frozenset(await asyncio.to_thread(lambda: list(self._host_ips())))  # type: ignore[misc]
        except Exception:
            log.exception("reading the host's addresses failed; keeping the previous ones")
            return None
        if ips == self._known_host_ips:
            return None
        self._known_host_ips = ips
        return ips


def named_ports_of(rec: EndpointRecord) -> tuple[tuple[str, int, int], ...]:
    """The record's named ports as the compiler takes them (protocol numbers)."""
    return tuple((p.name, int(Protocol[p.protocol]), p.port) for p in rec.named_ports)
