"""The agent core: wires state, policy source, regeneration, services and flows.

One place spawns, supervises and stops every task (kopf style). Start order:
state directory -> allocators and endpoint table from disk -> datapath
plumbing -> proxy (xDS server + Envoy) -> initial policy load -> first
regeneration of every endpoint (which adopts the pinned kernel state rather
than rebuilding it) -> services (the REST API and metrics). SIGTERM stops the
services, lets the regeneration in flight finish and stops the proxy, but
never detaches an endpoint: the kernel keeps enforcing the last policy while
the agent is away. Everything outside the process is reached through the
ports (agent/core/ports.py); agent/daemon.py plugs in the real adapters.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from ipaddress import IPv4Address, IPv6Address
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.core.cluster_sync import ClusterSync
from agent.core.endpoint_changes import EndpointChanges
from agent.core.endpoint_restore import restore_lost_endpoints
from agent.core.endpoint_table import EndpointTable
from agent.core.flow_enrich import FlowEnricher
from agent.core.flow_pump import pump_flows
from agent.core.flows import FlowHub
from agent.core.map_pressure import conntrack_status, upstream_ports_status
from agent.core.metrics import AgentMetrics
from agent.core.models import (
    BpfPolicyDump,
    Endpoint,
    EndpointConfig,
    EndpointCreate,
    Health,
    HostFirewallStatus,
    IdentityList,
    PolicyList,
    Status,
)
from agent.core.policy_book import PolicyBook
from agent.core.policy_reads import PolicyReads
from agent.core.ports import (
    Changes,
    ClusterSource,
    CompilerFactory,
    DatapathControl,
    HostEndpoint,
    PolicyCompiler,
    PolicyLoader,
    ServicePeers,
    FQDNPeers,
    PolicyObjects,
    PolicySourceFactory,
    ProxyControl,
    Service,
)
from agent.core.cluster_ports import NodeRouting, SharedState
from agent.core.regeneration_queue import RegenerationQueue
from agent.core.regenerator import RegenerationReport, Regenerator
from agent.core.reports import (
    Readings,
    bpf_policy_dump,
    families_of,
    endpoints_by_state,
    health_of,
    identities_by_type,
    identity_list,
    policies_by_state,
    status_of,
)
from agent.core.shutdown import stop_tasks
from agent.core.state_store import StateStore
from policy.compiled import HOST_ENDPOINT_ID, CompiledState
from policy.host_rails import NAME as RAILS_NAME

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("/var/run/ciliate")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    state_dir: Path = DEFAULT_STATE_DIR
    socket_path: Path | None = None  # default: <state_dir>/agent.sock
    policy_dir: Path | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 9962  # None: no metrics listener; 0: any free port
    poll_interval: float = 0.2
    ack_timeout: float = 5.0
    # No pause before a regeneration: what arrives while one runs is
    # coalesced into the next batch anyway, and a pause here was paid by
    # every single change (5 ms of a 25 ms file -> drop).
    settle: float = 0.0
    shutdown_grace: float = 10.0
    pod_wait: float = 5.0  # Kubernetes mode: how long an endpoint create waits for its Pod to be seen
    policy_audit_mode: bool = False  # endpoints without their own setting audit instead of enforcing
    # Host policies (nodeSelector): the node is an endpoint with these
    # settings; None: host policies are accepted and enforce nothing.
    host: HostEndpoint | None = None
    host_policy_audit_mode: bool = False  # the node's policy is audited, not enforced
    node_labels: Mapping[str, str] | None = None  # this node's labels (fromNodes/toNodes, nodeSelector)

    @property
    def socket(self) -> Path:
        return self.socket_path or self.state_dir / "agent.sock"


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        compiler_factory: CompilerFactory,
        loader: PolicyLoader,
        datapath: DatapathControl,
        proxy: ProxyControl,
        policy_source: PolicySourceFactory | None = None,
        services: Sequence[Callable[["Agent"], Service]] = (),
        host_ips: Callable[[], Iterable[IPv4Address | IPv6Address]] | None = None,
        cluster: ClusterSource | None = None,
        shared: SharedState | None = None,
        routing: NodeRouting | None = None,
        service_peers: ServicePeers | None = None,
        fqdn_peers: FQDNPeers | None = None,
        learned_names: Callable[[], Any] | None = None,
    ) -> None:
        """`shared` (with `routing`) joins the agent to a cluster of nodes
        through a kvstore: identities, endpoints and nodes shared with the
        other agents. `policy_source` watches config.policy_dir (required when it is set);
        `cluster` brings policies and pod labels from the Kubernetes API;
        `services` are built from the started agent and started after it (the
        REST API), in order, and stopped before it, in reverse.
        `service_peers` resolves the Kubernetes Services policies name
        (`toServices`) against what `cluster` reports; without `cluster`
        they select nothing and the policy status says why."""
        if config.policy_dir is not None and policy_source is None:
            raise ValueError("AgentConfig.policy_dir is set but no policy_source watches it")
        self.config = config
        self._host_ips = host_ips
        self.cluster = cluster
        self.shared = shared
        self.routing = routing
        self.store = StateStore(config.state_dir)
        self.table = EndpointTable(self.store)
        self.book = PolicyBook(service_peers, fqdn_peers)
        # What the DNS proxy learned before a restart, read before the first
        # regeneration so toFQDNs peers stay admitted across it.
        self._learned_names = learned_names
        self.dns_proxy: Any = None  # set by the DNS proxy service, for the API
        self.flows = FlowHub()
        self.metrics = AgentMetrics(
            policy_counts=self.policy_counts, rule_features=self.rule_features, endpoint_counts=lambda: endpoints_by_state(self.table), identity_counts=self.identity_counts,
            kvstore=shared.status if shared is not None else None,
            kubernetes=cluster.health if cluster is not None else None,
        )
        self.enricher = FlowEnricher(self.table, self._enforced_state, self._identity_labels)
        # When each policy change not yet regenerated was seen (monotonic), for
        # ciliate_policy_implementation_delay_seconds.
        self._policy_seen: list[float] = []
        self.loader = loader
        self.datapath = datapath
        self.proxy = proxy
        self._compiler_factory = compiler_factory
        self.compiler: PolicyCompiler | None = None
        self.queue = RegenerationQueue(self._regenerate, settle=config.settle)
        self.endpoint_changes = EndpointChanges(self.table, self.queue, cluster, config.pod_wait)
        self.regenerator: Regenerator | None = None
        self.watcher = (
            policy_source(config.policy_dir, self._on_policy_change, config.poll_interval)
            if policy_source is not None and config.policy_dir is not None
            else None
        )
        self._tasks: list[asyncio.Task[Any]] = []
        self._worker: asyncio.Task[None] | None = None
        self._service_factories = tuple(services)
        self.services: list[Service] = []  # the started ones
        self._stopping = asyncio.Event()
        self._policy_reads = PolicyReads(self.book, self.table, lambda: self.regenerator)
        self.started_at = 0.0

    # --- lifecycle -----------------------------------------------------------------
    async def start(self, *, serve_api: bool = True) -> None:
        """Start the core; with `serve_api` also the services (the REST API)."""
        self.store.ensure()
        self.compiler = self._compiler_factory(self.store.load_allocations())
        restored = self.table.load()
        restored += await restore_lost_endpoints(self.table, self.datapath, self.compiler, self.config.state_dir)
        cluster_sync = (
            ClusterSync(self.shared, self.routing, self.compiler.identity_labels) if self.shared is not None else None
        )
        self.regenerator = Regenerator(
            compiler=self.compiler,
            datapath=self.datapath,
            proxy=self.proxy,
            table=self.table,
            book=self.book,
            save_allocations=self.store.save_allocations,
            retry=lambda delay, ids, reason: self.queue.mark_later(delay, ids, reason),
            ack_timeout=self.config.ack_timeout,
            host_ips=self._host_ips,
            policy_audit_mode=self.config.policy_audit_mode,
            cluster=cluster_sync,
            host=self.config.host,
            host_audit_mode=self.config.host_policy_audit_mode,
            node_labels=self.config.node_labels,
        )
        self.regenerator.on_report = self._observe
        await self.datapath.setup()
        if self.routing is not None:
            await self.routing.setup()
        if self.shared is not None:
            await self.shared.start(lambda: self.queue.mark(policy_changed=True, reason="cluster state changed"))
        await self.proxy.start()
        if self.config.policy_dir is not None and not self.config.policy_dir.is_dir():
            log.warning("policy directory %s does not exist (yet); no policy is loaded until it does", self.config.policy_dir)
        if self.watcher is not None:
            await self.watcher.poll_once()
        if self.cluster is not None:
            # The first regeneration waits for the API's policies: without them
            # it would open what the kernel's pinned maps still close.
            await self.cluster.start(self)
            await self.endpoint_changes.relabel(self.endpoint_changes.names())
        if self._learned_names is not None:
            self.book.set_names(self._learned_names())
        self.queue.mark(restored, policy_changed=True, reason="agent start")
        self._worker = asyncio.create_task(self.queue.run(), name="ciliate-regeneration")
        if self.watcher is not None:
            self._tasks.append(asyncio.create_task(self.watcher.run(), name="ciliate-policy-watch"))
        for source, name in ((self.datapath.flow_events, "kernel"), (self.proxy.access_log, "envoy")):
            pump = pump_flows(source, name, self.enricher, self.flows, self.metrics)
            self._tasks.append(asyncio.create_task(pump, name=f"ciliate-flows-{name}"))
        if serve_api:
            for make in self._service_factories:
                service = make(self)
                await service.start()
                self.services.append(service)
        self.started_at = time.time()
        log.info("agent started: %d endpoints restored, state in %s", len(restored), self.config.state_dir)

    async def stop(self) -> None:
        self.flows.close()  # lets streaming API handlers finish before the server goes
        while self.services:
            await self.services.pop().stop()
        await stop_tasks(self._tasks, self.config.shutdown_grace, "agent tasks")
        self._tasks.clear()
        if self.cluster is not None:
            await self.cluster.stop()
        if self.shared is not None:
            await self.shared.stop()
        if self._worker is not None:
            try:
                await self.queue.drain(self.config.shutdown_grace)
            except TimeoutError:
                log.warning("regeneration still running after %.0fs; stopping it", self.config.shutdown_grace)
            await stop_tasks([self._worker], self.config.shutdown_grace, "regeneration")
            self._worker = None
        await self.proxy.stop()
        await self.datapath.close()
        # Deliberately no detach: pinned maps and tc programs keep enforcing.
        log.info("agent stopped; datapath left enforcing")

    def request_stop(self) -> None:
        self._stopping.set()

    async def run_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
            await self._stopping.wait()
        finally:
            await self.stop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    # --- events in -------------------------------------------------------------------
    async def _on_policy_change(self, changes: Changes) -> None:
        seen = time.monotonic()
        changed = False
        m = self.metrics
        for path in sorted(changes.removed):
            changed |= self.book.remove_file(path)
            m.policy_changes.labels("success").inc()
            log.info("policy file removed: %s", path)
        for path in sorted(changes.changed):
            loaded = await asyncio.to_thread(self.loader.load_file, path)
            changed |= self.book.update_file(path, loaded)
            ok = not self.book.problems().get(path)
            m.policy_changes.labels("success" if ok else "failure").inc()
            if not ok:
                m.policy_import_errors.inc()
                for p in self.book.problems()[path]:
                    log.warning("policy file invalid, previous version kept: %s", p)
            else:
                log.info("policy file loaded: %s (%d policies)", path, len(loaded.policies))
        if changed:
            self._policy_seen.append(seen)
            self.queue.mark(policy_changed=True, reason="policy files changed")

    async def policy_objects_changed(self, objects: PolicyObjects) -> None:
        """Policy objects from the cluster source, each one unit as a file is."""
        changed = False
        for source in sorted(objects.removed):
            changed |= self.book.remove_file(source)
            log.info("policy object removed: %s", source)
        for source, loaded in sorted(objects.changed.items()):
            changed |= self.book.update_file(source, loaded)
            problems = self.book.problems().get(source, ())
            for p in problems:
                log.warning("policy object invalid, previous version kept: %s", p)
            if not problems:
                log.info("policy object loaded: %s", source)
        if changed:
            self.queue.mark(policy_changed=True, reason="policy objects changed")
        if self.cluster is not None:
            self.cluster.regenerated()  # a validation error shows without a regeneration

    async def services_changed(self, services: Any) -> None:
        """A new snapshot of the cluster's Services (ClusterEvents): only the
        policies whose resolution changed are recompiled."""
        if self.book.set_services(services):
            self._policy_seen.append(time.monotonic())
            self.queue.mark(policy_changed=True, reason="services changed")

    async def fqdn_names_changed(self, names: Any, wait: float) -> bool:
        """What the node's pods resolved changed (the DNS proxy): the
        policies with toFQDNs items whose addresses changed are recompiled.
        Returns once that regeneration is done (the kernel admits the new
        addresses), or False after `wait` seconds; True at once when no
        policy resolves differently."""
        if not self.book.set_names(names):
            return True
        ticket = self.queue.ticket()
        self._policy_seen.append(time.monotonic())
        self.queue.mark(policy_changed=True, reason="DNS answers changed toFQDNs peers")
        return await self.queue.wait_for(ticket, wait)

    def enforced_state(self) -> CompiledState | None:
        """The compiled state the datapath enforces now (None before the first regeneration)."""
        return self._enforced_state()

    async def endpoint_labels_changed(self, names: Iterable[str]) -> None:
        """Re-identify the endpoints of these pods whose labels changed (ClusterEvents)."""
        await self.endpoint_changes.relabel(names)

    async def node_labels_changed(self) -> None:
        """This node's labels changed in the cluster source (ClusterEvents):
        the host endpoint's policy (nodeSelector) and every policy selecting
        the node (fromNodes/toNodes) are compiled again."""
        regen = self.regenerator
        if regen is None or self.cluster is None:
            return
        if regen.compile_step.set_cluster_node_labels(self.cluster.node_labels()):
            self._policy_seen.append(time.monotonic())
            self.queue.mark(policy_changed=True, reason="node labels changed")

    async def _regenerate(self, batch) -> None:
        regen = self.regenerator
        assert regen is not None
        # The queue took this batch just now, with no await in between: every
        # change seen so far is in it, later ones wait for the next batch.
        seen, self._policy_seen = (self._policy_seen, []) if batch.policy_changed else ([], self._policy_seen)
        refused = dict(regen.compile_step.compile_errors)
        t0 = time.perf_counter()
        await regen.regenerate(batch)
        self.metrics.regeneration_seconds.labels("total").observe(time.perf_counter() - t0)
        new_refusals = sum(1 for k, msg in regen.compile_step.compile_errors.items() if refused.get(k) != msg)
        if new_refusals:
            self.metrics.policy_import_errors.inc(new_refusals)
        if regen.last_state is not None and regen.last_state.revision == batch.revision:
            done = time.monotonic()
            for t in seen:
                self.metrics.policy_delay.labels("file").observe(done - t)

    def _observe(self, report: RegenerationReport) -> None:
        m = self.metrics
        m.policy_revision.set(report.revision)
        if self.cluster is not None:
            self.cluster.regenerated()
        if report.publish is not None:
            m.proxy_publishes.labels(report.publish).inc()
        ok = len(report.changed - report.failed.keys())
        if ok:
            m.regenerations.labels("success").inc(ok)
        if report.failed:
            m.regenerations.labels("failure").inc(len(report.failed))

    async def read_kernel_counters(self) -> None:
        """Read the kernel's verdict counters and map fill now (metrics and
        status show them). A failed read leaves the last reading in place: a
        scrape or a status must not fail because the kernel side is busy."""
        try:
            self.metrics.datapath = await self.datapath.counters()
        except Exception as exc:
            log.warning("reading the datapath's counters failed; serving the last ones: %s", exc)

    async def scrape(self) -> bytes:
        """The metrics text, with the kernel's counters and the proxy's totals
        read now. A port that cannot answer leaves its last reading in place."""
        await self.read_kernel_counters()
        try:
            self.metrics.proxy = self.proxy.counters()
        except Exception as exc:
            log.warning("reading the proxy's counters failed; serving the last ones: %s", exc)
        return self.metrics.render()

    def _identity_labels(self) -> Mapping[int, frozenset[str]]:
        return self.compiler.identity_labels() if self.compiler is not None else {}

    def _enforced_state(self) -> CompiledState | None:
        return self.regenerator.last_state if self.regenerator is not None else None

    # --- what the API serves ---------------------------------------------------------
    async def create_endpoint(self, req: EndpointCreate, wait: float | None) -> tuple[Endpoint, bool]:
        return await self.endpoint_changes.create(req, wait)

    async def configure_endpoint(self, endpoint_id: int, cfg: EndpointConfig, wait: float | None) -> Endpoint | None:
        return await self.endpoint_changes.configure(endpoint_id, cfg, wait)

    async def delete_endpoint(self, endpoint_id: int) -> Endpoint | None:
        return await self.endpoint_changes.delete(endpoint_id)

    def policies(self) -> PolicyList:
        """Every policy's status, computed from the current state (reads only)."""
        return self._policy_reads.statuses()

    def policy_counts(self) -> dict[str, int]:
        """Policies by status, for the ciliate_policies gauge (read at scrape time)."""
        return policies_by_state(self.policies())

    def rule_features(self) -> dict[str, int]:
        """Rules in force by the parts of the language they use, for ciliate_policy_rules."""
        return self._policy_reads.features()

    def identity_counts(self) -> dict[str, int]:
        """Identities by type (reserved, endpoint, cidr), for the ciliate_identity gauge."""
        return identities_by_type(self._identity_labels())

    def identities(self) -> IdentityList:
        return identity_list(self._identity_labels(), self.table.views())

    def _readings(self) -> Readings:
        return Readings(
            regenerating=self._worker is not None and not self._worker.done(),
            proxy=self.proxy.status(),
            kubernetes=self.cluster.health() if self.cluster is not None else None,
            kvstore=self.shared.status() if self.shared is not None else None,
        )

    def health(self) -> Health:
        return health_of(self._readings())

    def status(self) -> Status:
        return self._with_host(status_of(
            self._readings(),
            self.policies(),
            endpoints_by_state(self.table),
            self.config.state_dir,
            self.config.policy_dir,
            conntrack_status(self.metrics.datapath),  # as last read: read_kernel_counters()
            upstream_ports_status(self.metrics.datapath),
            families_of(self.datapath.families(), (r for i in self.table.ids() if (r := self.table.record(i)) is not None)),
        ))

    def _with_host(self, status: Status) -> Status:
        host = self.regenerator.compile_step.host if self.regenerator is not None else self.config.host
        if host is None:
            return status
        ep = self.regenerator.realized.get(HOST_ENDPOINT_ID) if self.regenerator is not None else None
        return status.model_copy(update={"host_firewall": HostFirewallStatus(
            endpoint_id=HOST_ENDPOINT_ID,
            devices=list(host.devices),
            node_labels=dict(host.labels),
            ingress_enforced=bool(ep and ep.ingress_enforced),
            egress_enforced=bool(ep and ep.egress_enforced),
            audit=bool(ep and ep.audit),
            policies=sorted(p for p in ep.selected_by if p != RAILS_NAME) if ep else [],
            always_reach=[f"{a}:{p}" if a.version == 4 else f"[{a}]:{p}" for a, p in host.always_reach],
        )})

    async def bpf_policy(self, endpoint_id: int) -> BpfPolicyDump | None:
        if endpoint_id not in self.table and not (endpoint_id == HOST_ENDPOINT_ID and self.config.host is not None):
            return None
        entries = await self.datapath.dump_policy(endpoint_id)
        return bpf_policy_dump(endpoint_id, entries, self._identity_labels())
