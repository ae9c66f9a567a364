"""The Regenerator: one regeneration is compile, publish to Envoy and wait
for its ACK, write the kernel, record.

Order matters and follows Cilium: the proxy listener must be acknowledged by
Envoy before the kernel redirects traffic to it, so the xDS snapshot goes out
first and the datapath is written after the ACK. When Envoy rejects or does
not answer, the endpoints whose L7 config Envoy does not hold are written
fail-closed (their redirect entries become denies) and marked not-ready with
the reason (make_before_break.py has both rules). Only endpoints whose
compiled policy changed are regenerated. I/O only through the
PolicyCompiler, DatapathControl and ProxyControl ports.

Compiling can take seconds (20k toCIDR prefixes), so every call into the
compiler runs in a worker thread (`offload`) while the event loop keeps
serving the API: the loop snapshots the inputs (policy book, endpoint
records), one thread applies them and compiles, and the loop adopts the
result. Only this worker calls the compiler and it awaits each job, so the
compiler is never touched by two threads at once; API reads such as
identity_labels() see the last immutable CompiledState.
"""

from __future__ import annotations

import logging
import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from ipaddress import IPv4Address
from dataclasses import dataclass, field, replace
from typing import Any

from agent.core.cluster_sync import RETRY_IDENTITY, ClusterSync, node_ips
from agent.core.endpoint_table import EndpointTable
from agent.core.l7_view import l7_view
from agent.core.make_before_break import fail_closed, with_retiring
from agent.core.models import EndpointState
from agent.core.policy_book import BookEntry, PolicyBook
from agent.core.ports import (
    Allocations,
    ClusterPeers,
    ApplyOutcome,
    DatapathControl,
    EndpointSpec,
    Failure,
    PolicyCompiler,
    ProxyControl,
    ProxyRejected,
    ProxyTimeout,
)
from agent.core.regeneration_queue import Batch
from policy.compiled import CompiledState, EndpointPolicy, L7Policy

log = logging.getLogger(__name__)

RETRY_MIN = 0.5
RETRY_MAX = 30.0

Offload = Callable[..., Awaitable[Any]]


def with_audit(state: CompiledState, audited: frozenset[int]) -> CompiledState:
    """`state` with these endpoints in policy audit mode (the compiler knows
    nothing of it: it is the endpoint's setting, not policy)."""
    if not audited & state.endpoints.keys():
        return state
    endpoints = {i: replace(ep, audit=True) if i in audited else ep for i, ep in state.endpoints.items()}
    return CompiledState(state.revision, endpoints, state.ipcache, state.identity_labels)


@dataclass(frozen=True, slots=True)
class CompileJob:
    """What the compiler is told in one regeneration, snapshotted on the loop."""

    revision: int
    host_ips: frozenset[IPv4Address] | None
    deleted_policies: tuple[str, ...]
    upserted_policies: tuple[tuple[str, BookEntry], ...]
    endpoints: tuple[tuple[int, EndpointSpec | None], ...]  # None: the record is gone
    in_compiler: frozenset[int]
    audited: frozenset[int] = frozenset()  # endpoints in policy audit mode
    remote: ClusterPeers | None = None  # cluster mode: the rest of the cluster, when it changed


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


# How the publish to Envoy of one regeneration ended (the `outcome` label of
# ciliate_proxy_publishes); None in a report: nothing new to publish.
PUBLISH_ACKED = "acked"
PUBLISH_REJECTED = "rejected"
PUBLISH_TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class RegenerationReport:
    revision: int
    changed: frozenset[int]
    removed: frozenset[int]
    published: bool  # Envoy holds the L7 configuration of this revision
    failed: Mapping[int, Failure]
    publish: str | None = None  # PUBLISH_* when a publish was attempted


class Regenerator:
    def __init__(
        self,
        *,
        compiler: PolicyCompiler,
        datapath: DatapathControl,
        proxy: ProxyControl,
        table: EndpointTable,
        book: PolicyBook,
        save_allocations: Callable[[Allocations], None],
        retry: Callable[[float, Iterable[int], str], object],
        ack_timeout: float = 5.0,
        host_ips: Callable[[], Iterable[IPv4Address]] | None = None,
        policy_audit_mode: bool = False,
        cluster: ClusterSync | None = None,
    ) -> None:
        """`policy_audit_mode`: the agent-wide default of endpoints whose record
        does not say (EndpointRecord.policy_audit_mode None); `cluster`: the
        shared store's part (identities, peers, publication) in cluster mode."""
        self.cluster = cluster
        self.compiler = compiler
        self.policy_audit_mode = policy_audit_mode
        self.datapath = datapath
        self.proxy = proxy
        self.table = table
        self.book = book
        self._save_allocations = save_allocations
        self._retry = retry
        self.ack_timeout = ack_timeout
        self.realized: dict[int, EndpointPolicy] = {}
        # The last state written to the kernel; its revision is the agent's
        # policy revision (RegenerationQueue counts it), not a second counter.
        self.last_state: CompiledState | None = None
        # The book entries that state was compiled from: a policy whose entry
        # in force is not this one (new, changed) is still pending.
        self.applied_policies: Mapping[str, BookEntry] = {}
        self.compile_errors: dict[str, str] = {}
        self.last_report: RegenerationReport | None = None
        self._given: dict[str, BookEntry] = {}
        self._in_compiler: set[int] = set()
        self._published_view: tuple | None = None
        self._acked_l7: dict[int, L7Policy] = {}
        self._saved_alloc: Allocations | None = None
        self._attempts: dict[int, int] = {}
        self.on_report: Callable[[RegenerationReport], None] | None = None
        self._host_ips = host_ips
        self._known_host_ips: frozenset[IPv4Address] | None = None
        # How blocking work leaves the event loop (the compiler, the
        # allocation save). A worker thread; bench/bench_cidr.py swaps in an
        # inline call to measure the old on-loop behaviour as its baseline.
        self.offload: Offload = asyncio.to_thread

    # --- inputs into the compiler: snapshot on the loop, apply in the thread ---
    def _job(
        self,
        batch: Batch,
        host_ips: frozenset[IPv4Address] | None,
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
            endpoints.append((eid, None if rec is None else EndpointSpec(eid, dict(rec.labels), rec.ipv4, ident)))
        audited = frozenset(i for i in self.table.ids() if self.audits(i))
        return CompileJob(
            batch.revision, host_ips, deleted, upserted, tuple(endpoints), frozenset(self._in_compiler), audited, remote
        )

    def audits(self, endpoint_id: int) -> bool:
        """Whether this endpoint's policy is audited: its own setting, else the agent's."""
        rec = self.table.record(endpoint_id)
        if rec is None:
            return False
        return self.policy_audit_mode if rec.policy_audit_mode is None else rec.policy_audit_mode

    def _compile(self, job: CompileJob) -> CompileResult:
        """Runs in the worker thread: the only place the compiler is called."""
        out = CompileResult()
        c = self.compiler
        if job.host_ips is not None:
            c.set_host_ips(job.host_ips)
        if job.remote is not None:
            c.set_remote(job.remote.endpoints, node_ips(job.remote))
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
        # Reads `realized` while the loop waits for us; only this worker writes it.
        # The compiler hands back the same object for an unchanged endpoint: `is` first.
        out.changed = {i for i, ep in state.endpoints.items() if (old := self.realized.get(i)) is not ep and old != ep}
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

    async def _persist_allocations(self, alloc: Allocations | None) -> None:
        if alloc is None:
            return
        await self.offload(self._save_allocations, alloc)  # JSON + fsync of every CIDR identity
        self._saved_alloc = alloc

    # --- the pipeline ------------------------------------------------------------
    @property
    def applied_revision(self) -> int:
        """The policy revision the kernel holds (0 before the first regeneration)."""
        return self.last_state.revision if self.last_state is not None else 0

    async def _publish(self, state: CompiledState, view: tuple) -> tuple[str | None, Failure | None]:
        """(PUBLISH_* outcome or None when nothing changed, the failure if any)."""
        if view == self._published_view or (view == () and self._published_view is None):
            return None, None
        try:
            await self.proxy.publish(state, self.ack_timeout)
        except ProxyRejected as exc:
            return PUBLISH_REJECTED, Failure("envoy-nack", f"Envoy rejected the proxy configuration: {exc.detail}")
        except ProxyTimeout as exc:
            return PUBLISH_TIMEOUT, Failure("envoy-timeout", f"Envoy did not acknowledge the proxy configuration: {exc}", transient=True)
        except Exception as exc:
            return PUBLISH_TIMEOUT, Failure("envoy-timeout", f"publishing to Envoy failed: {exc}", transient=True)
        self._published_view = view
        self._acked_l7 = {l7.proxy_port: l7 for ep in state.endpoints.values() for l7 in ep.l7}
        return PUBLISH_ACKED, None

    async def _new_host_ips(self) -> frozenset[IPv4Address] | None:
        """The host's addresses when they differ from what the compiler has, else None."""
        # New endpoints may bring new host addresses (their gateway on ciliate_host).
        if self._host_ips is None:
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

    async def regenerate(self, batch: Batch) -> RegenerationReport:
        host_ips = await self._new_host_ips() if batch.endpoints or self._known_host_ips is None else None
        identities: dict[int, int] = {}
        waiting: dict[int, str] = {}
        remote = None
        if self.cluster is not None:
            specs = [
                EndpointSpec(eid, dict(rec.labels), rec.ipv4)
                for eid in sorted(batch.endpoints)
                if (rec := self.table.record(eid)) is not None
            ]
            identities, waiting = await self.cluster.identities(specs)
            remote = self.cluster.peers_if_changed()
        job = self._job(batch, host_ips, identities, waiting, remote)
        res: CompileResult = await self.offload(self._compile, job)
        self._adopt(job, res)
        for eid, reason in waiting.items():
            self.table.set_live(eid, state=EndpointState.WAITING_FOR_IDENTITY, reason=reason)
        if waiting:
            self._retry(RETRY_IDENTITY, list(waiting), "identity not yet allocated")
        removed = res.removed
        state = res.state
        if state is None:
            failure = Failure("datapath", f"policy compilation failed: {res.error}")
            for eid in batch.endpoints:
                self.table.set_live(eid, state=EndpointState.NOT_READY, reason=failure.message, failure=failure)
            await self.table.notify()
            return RegenerationReport(batch.revision, frozenset(), frozenset(removed), False, {})
        await self._persist_allocations(res.allocations)
        endpoints = {i: ep for i, ep in state.endpoints.items() if i in self.table}
        changed = res.changed & endpoints.keys()
        changed |= batch.endpoints & endpoints.keys()
        for eid in changed:
            self.table.set_live(eid, state=EndpointState.REGENERATING)
        if changed:
            await self.table.notify()

        failures: dict[int, Failure] = {}
        for eid in sorted(changed):
            live = self.table.live(eid)
            rec = self.table.record(eid)
            if live is None or rec is None or live.attached:
                continue
            try:
                await self.datapath.attach_endpoint(eid, rec.host_ifname, rec.ipv4, endpoints[eid].identity)
                self.table.set_live(eid, attached=True)
            except Exception as exc:
                failures[eid] = Failure("datapath", f"attaching to {rec.host_ifname} failed: {exc}", transient=True)

        bridge = with_retiring(state, self.realized)
        if bridge is None:
            publish, proxy_failure = await self._publish(state, res.view)
        else:
            publish, proxy_failure = await self._publish(bridge, l7_view(bridge))
        published = proxy_failure is None
        effective: dict[int, EndpointPolicy] = {}
        for eid, ep in endpoints.items():
            safe = fail_closed(ep, self._acked_l7)
            if safe is not ep and proxy_failure is not None:
                failures.setdefault(eid, proxy_failure)
            effective[eid] = safe

        attached = {i: ep for i, ep in effective.items() if (lv := self.table.live(i)) is not None and lv.attached}
        apply_state = CompiledState(state.revision, attached, state.ipcache, state.identity_labels)
        try:
            outcome = await self.datapath.apply(apply_state)
        except Exception as exc:
            log.exception("datapath apply failed")
            outcome = ApplyOutcome({i: Failure("datapath", f"writing the kernel maps failed: {exc}", transient=True) for i in changed})
        for eid, f in outcome.failed.items():
            failures.setdefault(eid, f)
        if bridge is not None and published:
            # The kernel no longer redirects to the retiring listeners: drop them.
            _, final_failure = await self._publish(state, res.view)
            if final_failure is not None:
                log.warning("removing retired listeners from Envoy failed (they stay until the next publish): %s", final_failure.message)

        for eid in sorted(removed):
            self.realized.pop(eid, None)
            self._attempts.pop(eid, None)
            try:
                await self.datapath.detach_endpoint(eid)
            except Exception:
                log.exception("detaching endpoint %d failed", eid)

        self._record(state, endpoints, changed, failures)
        if self.cluster is not None:
            await self.cluster.after_apply(self._local_endpoints())
        self.last_state = state
        self.applied_policies = dict(self._given)
        await self.table.notify()
        report = RegenerationReport(state.revision, frozenset(changed), frozenset(removed), published, dict(failures), publish)
        self.last_report = report
        if self.on_report is not None:
            self.on_report(report)
        return report

    def _local_endpoints(self) -> dict[IPv4Address, tuple[int, frozenset[str]]]:
        """What this node publishes: each endpoint with an address and an identity."""
        labels = self.compiler.identity_labels()
        out: dict[IPv4Address, tuple[int, frozenset[str]]] = {}
        for eid in self.table.ids():
            rec, live = self.table.record(eid), self.table.live(eid)
            if rec is None or live is None or rec.ipv4 is None or live.identity is None or eid not in self._in_compiler:
                continue
            out[rec.ipv4] = (live.identity, labels.get(live.identity, frozenset()))
        return out

    def _record(self, state: CompiledState, endpoints: Mapping[int, EndpointPolicy], changed: set[int], failures: Mapping[int, Failure]) -> None:
        retry: list[int] = []
        for eid, ep in endpoints.items():
            live = self.table.live(eid)
            if live is None:
                continue
            common = dict(
                identity=ep.identity,
                ingress_enforced=ep.ingress_enforced,
                egress_enforced=ep.egress_enforced,
                policies=tuple(sorted(ep.selected_by)),
                audited=ep.audit,
            )
            failure = failures.get(eid)
            if failure is not None:
                self.realized.pop(eid, None)
                self.table.set_live(eid, state=EndpointState.NOT_READY, reason=f"{failure.kind}: {failure.message}", failure=failure, **common)
                if failure.transient:
                    retry.append(eid)
                continue
            self._attempts.pop(eid, None)
            if eid in changed or live.state != EndpointState.READY or live.policy_revision != state.revision:
                self.realized[eid] = ep
                self.table.set_live(eid, state=EndpointState.READY, reason=None, failure=None, policy_revision=state.revision, **common)
        if retry:
            attempt = max(self._attempts.get(i, 0) for i in retry)
            for i in retry:
                self._attempts[i] = self._attempts.get(i, 0) + 1
            delay = min(RETRY_MAX, RETRY_MIN * (2**attempt))
            self._retry(delay, retry, "retry after transient failure")
