"""The Regenerator: one regeneration is compile, publish to Envoy and wait
for its ACK, write the kernel, record.

Order matters and follows Cilium: the proxy listener must be acknowledged by
Envoy before the kernel redirects traffic to it, so the xDS snapshot goes out
first and the datapath is written after the ACK. When Envoy rejects or does
not answer, the endpoints whose L7 config Envoy does not hold are written
fail-closed (their redirect entries become denies) and marked not-ready with
the reason (make_before_break.py has both rules). Only endpoints whose
compiled policy changed are regenerated. The compiling itself, off the event
loop, is compile_step.py's. I/O only through the PolicyCompiler,
DatapathControl and ProxyControl ports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from ipaddress import IPv4Address, IPv6Address
from dataclasses import dataclass, replace

from agent.core.cluster_sync import RETRY_IDENTITY, ClusterSync
from agent.core.compile_step import CompileStep, named_ports_of
from agent.core.endpoint_table import EndpointTable
from agent.core.l7_view import l7_view
from agent.core.make_before_break import RedirectPorts, fail_closed, with_retiring
from agent.core.models import EndpointState
from agent.core.policy_book import BookEntry, PolicyBook
from agent.core.ports import (
    Allocations,
    ApplyOutcome,
    DatapathControl,
    EndpointSpec,
    EndpointUnsupported,
    Failure,
    HostEndpoint,
    PolicyCompiler,
    ProxyControl,
    ProxyRejected,
    ProxyTimeout,
)
from agent.core.regeneration_queue import Batch
from policy.compiled import HOST_ENDPOINT_ID, CompiledState, EndpointPolicy, L7Policy

log = logging.getLogger(__name__)

RETRY_MIN = 0.5
RETRY_MAX = 30.0


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
        host_ips: Callable[[], Iterable[IPv4Address | IPv6Address]] | None = None,
        policy_audit_mode: bool = False,
        cluster: ClusterSync | None = None,
        host: HostEndpoint | None = None,
        host_audit_mode: bool = False,
        node_labels: Mapping[str, str] | None = None,
    ) -> None:
        """`compiler`, `table`, `book`, `save_allocations`, `host_ips`,
        `policy_audit_mode`, `host` and `host_audit_mode`: the compile step's
        (compile_step.py); `cluster`:
        the shared store's part (identities, peers, publication) in cluster mode."""
        self.cluster = cluster
        self.datapath = datapath
        self.proxy = proxy
        self.table = table
        self.compile_step = CompileStep(
            compiler=compiler,
            table=table,
            book=book,
            save_allocations=save_allocations,
            host_ips=host_ips,
            policy_audit_mode=policy_audit_mode,
            host=host,
            host_audit_mode=host_audit_mode,
            node_labels=node_labels,
        )
        self._retry = retry
        self.ack_timeout = ack_timeout
        self.realized: dict[int, EndpointPolicy] = {}
        # The last state written to the kernel; its revision is the agent's
        # policy revision (RegenerationQueue counts it), not a second counter.
        self.last_state: CompiledState | None = None
        # The book entries that state was compiled from: a policy whose entry
        # in force is not this one (new, changed) is still pending.
        self.applied_policies: Mapping[str, BookEntry] = {}
        self.last_report: RegenerationReport | None = None
        self._published_view: tuple | None = None
        self._acked_l7: dict[int, L7Policy] = {}
        self._redirects = RedirectPorts()
        self._attempts: dict[int, int] = {}
        self.on_report: Callable[[RegenerationReport], None] | None = None

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

    async def regenerate(self, batch: Batch) -> RegenerationReport:
        step = self.compile_step
        host_ips = await step.new_host_ips(batch)
        identities: dict[int, int] = {}
        waiting: dict[int, str] = {}
        remote = None
        if self.cluster is not None:
            specs = [
                EndpointSpec(eid, dict(rec.labels), rec.ipv4, ipv6=rec.ipv6)
                for eid in sorted(batch.endpoints)
                if (rec := self.table.record(eid)) is not None
            ]
            identities, waiting = await self.cluster.identities(specs)
            remote = self.cluster.peers_if_changed()
        res = await step.compile(batch, host_ips, identities, waiting, remote, self.realized)
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
        await step.persist_allocations(res.allocations)
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
                await self.datapath.attach_endpoint(eid, rec.host_ifname, rec.ipv4, endpoints[eid].identity, rec.ipv6)
                self.table.set_live(eid, attached=True)
            except EndpointUnsupported as exc:
                # The datapath keeps its traffic dropped; retrying would not help.
                failures[eid] = Failure("datapath", f"{rec.host_ifname}: {exc}")
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
            safe = fail_closed(ep, self._acked_l7, self._redirects.of(ep))
            if safe is not ep and proxy_failure is not None:
                failures.setdefault(eid, proxy_failure)
            effective[eid] = safe

        attached = {i: ep for i, ep in effective.items() if (lv := self.table.live(i)) is not None and lv.attached}
        host_ep = state.endpoints.get(HOST_ENDPOINT_ID)
        if host_ep is not None:
            # The node's own entries: not a table row, nothing to attach.
            attached[HOST_ENDPOINT_ID] = host_ep
            self.realized[HOST_ENDPOINT_ID] = host_ep
        apply_state = replace(state, endpoints=attached)
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
            self._redirects.forget(eid)
            self._attempts.pop(eid, None)
            try:
                await self.datapath.detach_endpoint(eid)
            except Exception:
                log.exception("detaching endpoint %d failed", eid)

        self._record(state, endpoints, changed, failures)
        if self.cluster is not None:
            await self.cluster.after_apply(self._local_endpoints(), step.node_labels, self._local_named_ports())
        self.last_state = state
        self.applied_policies = dict(step.given)
        await self.table.notify()
        report = RegenerationReport(state.revision, frozenset(changed), frozenset(removed), published, dict(failures), publish)
        self.last_report = report
        if self.on_report is not None:
            self.on_report(report)
        return report

    def _local_named_ports(self) -> dict[IPv4Address | IPv6Address, tuple[tuple[str, int, int], ...]]:
        """What this node publishes of the ports its endpoints serve by name,
        per address (the other nodes resolve egress `port: http` by them)."""
        out: dict[IPv4Address | IPv6Address, tuple[tuple[str, int, int], ...]] = {}
        for eid in self.table.ids():
            rec = self.table.record(eid)
            if rec is None or not rec.named_ports or not self.compile_step.holds(eid):
                continue
            ports = named_ports_of(rec)
            for addr in (rec.ipv4, rec.ipv6):
                if addr is not None:
                    out[addr] = ports
        return out

    def _local_endpoints(self) -> dict[IPv4Address | IPv6Address, tuple[int, frozenset[str]]]:
        """What this node publishes: each address (either family) of each
        endpoint that has an identity."""
        labels = self.compile_step.compiler.identity_labels()
        out: dict[IPv4Address | IPv6Address, tuple[int, frozenset[str]]] = {}
        for eid in self.table.ids():
            rec, live = self.table.record(eid), self.table.live(eid)
            if rec is None or live is None or live.identity is None or not self.compile_step.holds(eid):
                continue
            for addr in (rec.ipv4, rec.ipv6):
                if addr is not None:
                    out[addr] = (live.identity, labels.get(live.identity, frozenset()))
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
