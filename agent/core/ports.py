"""The small interfaces the agent core drives: policy source and loader,
compiler, kernel datapath, Envoy proxy, and the services started beside it.

The core (agent/core/) only ever talks to these protocols; `agent/adapters/`
binds them to the real `policy/`, `redirect/`, `xds/` and `sidecar/` modules,
`agent/api/` is the service the daemon starts, and the tests bind the ports to
in-memory fakes. pyproject's import-linter contract keeps the core from
importing anything else of the kind. Pure types, no I/O.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any, Protocol

from policy.compiled import CompiledState


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """What the compiler needs to know about one endpoint."""

    endpoint_id: int
    labels: Mapping[str, str]
    ipv4: IPv4Address | None
    identity: int | None = None  # cluster mode: the number the cluster allocated for its labels
    # Last, with a default: callers give the fields above by position. The
    # compiler maps it to the same identity as ipv4 (one identity per pod).
    ipv6: IPv6Address | None = None
    # (name, protocol number, port) of each port it serves by name.
    named_ports: tuple[tuple[str, int, int], ...] = ()


@dataclass(frozen=True)
class HostEndpoint:
    """The node as an endpoint (host policies, `--host-firewall`): the labels
    nodeSelector matches, and the peers the node must always reach whatever
    its policies say (the agent's kvstore and API server: (address, TCP port))."""

    labels: Mapping[str, str]
    always_reach: tuple[tuple[IPv4Address | IPv6Address, int], ...] = ()
    devices: tuple[str, ...] = ()  # where the datapath enforces it besides pods' veths (for status)


class LoadedPolicy(Protocol):
    """One parsed policy as the loader hands it over and the compiler takes it
    back, unchanged (policy.model.Policy is one): the core reads only these
    three names and compares policies with ==.

    `key` is unique per policy object ("Kind/ns/name"); `ref_name` is what
    RuleRef.policy and EndpointPolicy.selected_by say ("ns/name" or "name").
    """

    @property
    def key(self) -> str: ...

    @property
    def ref_name(self) -> str: ...

    @property
    def kind(self) -> str: ...


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """A validation error, said the way a person fixes it: where, which field, why."""

    source: str
    field: str
    message: str
    policy: str | None = None  # the policy's name when the document got that far

    def __str__(self) -> str:
        where = f"{self.source}: {self.field}" if self.field else self.source
        return f"{where}: {self.message}"


@dataclass(frozen=True, slots=True)
class LoadedFile:
    policies: tuple[LoadedPolicy, ...] = ()
    problems: tuple[PolicyProblem, ...] = ()


@dataclass(frozen=True, slots=True)
class Allocations:
    """The allocator state that must survive a restart, as opaque JSON values."""

    identities: Any = None
    proxy_ports: Any = None


@dataclass(frozen=True, slots=True)
class Changes:
    """Policy files that changed (or appeared) and files that went away."""

    changed: frozenset[Path]
    removed: frozenset[Path]

    def __bool__(self) -> bool:
        return bool(self.changed or self.removed)


OnPolicyChange = Callable[[Changes], Awaitable[None]]


class PolicySource(Protocol):
    """Tells the agent which policy files changed (a watched directory today)."""

    async def poll_once(self) -> Changes:
        """Look now; the changes found are handed to the callback before this returns."""
        ...

    async def run(self) -> None:
        """Keep looking until cancelled."""
        ...


class PolicySourceFactory(Protocol):
    def __call__(self, directory: Path, on_change: OnPolicyChange, interval: float) -> PolicySource: ...


class FQDNPeers(Protocol):
    """Resolves a policy's toFQDNs items into the addresses the node's pods
    resolved for matching names (`names`: name -> addresses, as the DNS
    proxy hands them over; None: nothing learned)."""

    def resolve(self, policy: LoadedPolicy, names: Any) -> tuple[LoadedPolicy, tuple[str, ...]]:
        """The policy to compile (the same object when it has no toFQDNs)
        and, per toFQDNs item that selects nothing yet, why."""
        ...


class PolicyLoader(Protocol):
    def load_file(self, path: Path) -> LoadedFile:
        """Parse and validate one file; never raises for bad content."""
        ...


class ServicePeers(Protocol):
    """Resolves the Services a policy names (CNP `toServices`) into the peers
    behind them, given the cluster's Services as the ClusterSource handed
    them over (opaque to the core; None: no source of Services at all)."""

    def resolve(self, policy: LoadedPolicy, services: Any) -> tuple[LoadedPolicy, tuple[str, ...]]:
        """The policy to compile (the same object when it names no Service)
        and, per toServices item that selects nothing, why."""
        ...


class PolicyCompiler(Protocol):
    """Holds policies and endpoints; allocates identities and proxy ports."""

    def upsert_policy(self, policy: LoadedPolicy) -> None: ...

    def delete_policy(self, key: str) -> None: ...

    def upsert_endpoint(self, endpoint: EndpointSpec) -> int:
        """Add or update an endpoint; returns its (possibly new) identity."""
        ...

    def delete_endpoint(self, endpoint_id: int) -> None: ...

    def set_host(self, host: HostEndpoint | None) -> None:
        """The node as an endpoint (host policies) with these settings; None: not."""
        ...

    def set_node_labels(self, labels: Mapping[str, str] | None) -> None:
        """This node's labels (fromNodes/toNodes select the node by them)."""
        ...

    def set_host_ips(self, ips: Iterable[IPv4Address | IPv6Address]) -> None:
        """Addresses that carry the `host` identity in the ipcache."""
        ...

    def set_remote(
        self, endpoints: Mapping[IPv4Address | IPv6Address, tuple[int, frozenset[str]]],
        node_ips: Iterable[IPv4Address | IPv6Address],
        node_labels: Mapping[IPv4Address | IPv6Address, Mapping[str, str]] | None = None,
        named_ports: Mapping[IPv4Address | IPv6Address, tuple[tuple[str, int, int], ...]] | None = None,
        changed: frozenset[IPv4Address | IPv6Address] | None = None,
        nodes_unchanged: bool = False,
    ) -> None:
        """Cluster mode: the other nodes' endpoints (address -> identity,
        labels; and the ports each serves by name) and addresses (with the
        labels their node published), whole; peers in policy, never its
        subjects. `changed`: the only addresses whose endpoint entry differs
        from the previous call's, when known (None: compare everything).
        `nodes_unchanged`: the nodes are the previous call's (`node_ips` and
        `node_labels` are not read)."""
        ...

    def compile(self, revision: int) -> CompiledState:
        """The full compiled state, stamped with the agent's policy `revision`."""
        ...

    def allocations(self) -> Allocations:
        """Current allocator state, to be persisted."""
        ...

    def labels_of_identity(self, identity: int) -> frozenset[str]:
        """The label set an allocated identity stands for (empty if unknown);
        from the persisted allocations, so it answers before any compile."""
        ...

    def identity_labels(self) -> Mapping[int, frozenset[str]]:
        """Every allocated identity (reserved ones included) and its labels."""
        ...


class CompilerFactory(Protocol):
    def __call__(self, allocations: Allocations | None) -> PolicyCompiler: ...


@dataclass(frozen=True, slots=True)
class Failure:
    """Why one endpoint could not be realized; kind is an agent.core.models.PolicyErrorKind value."""

    kind: str  # "map-full" | "datapath" | "envoy-nack" | "envoy-timeout"
    message: str
    transient: bool = False  # worth retrying without any change of input


@dataclass(frozen=True, slots=True)
class ApplyOutcome:
    """Per-endpoint failures of one datapath apply (map full, write errors)."""

    failed: Mapping[int, Failure] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DumpedEntry:
    """One kernel policy-map entry, decoded."""

    identity: int
    direction: str
    protocol: str
    ports: str
    verdict: str
    proxy_port: int


@dataclass(frozen=True, slots=True)
class KernelEndpoint:
    """An endpoint the datapath attached, as its per-endpoint record says."""

    endpoint_id: int
    host_ifname: str
    ipv4: IPv4Address | None  # None: IPv6-only
    identity: int
    link_present: bool  # the veth it was attached to still exists
    ipv6: IPv6Address | None = None


@dataclass(frozen=True, slots=True)
class VerdictCounter:
    """Packets the kernel counted for one (verdict, reason, direction)."""

    verdict: str  # "drop" | "forward" | "redirect"
    reason: str  # e.g. "policy-deny", "no-policy-match"
    direction: str  # "ingress" | "egress" | "none" (decided before any policy)
    packets: int


@dataclass(frozen=True, slots=True)
class MapFill:
    name: str  # e.g. "ciliate_ct", "ciliate_policy_7"
    entries: int
    capacity: int


@dataclass(frozen=True, slots=True)
class UpstreamPorts:
    """Where the proxy's upstreams that keep a client's address get their
    source port: the agent's range, assigned by the datapath, or (when that
    could not be set up) the node's ip_local_port_range."""

    ports: str  # "61000-65535"
    by_datapath: bool
    assigned: int = 0  # connections given a port from the range
    busy: int = 0  # probed ports skipped as taken
    exhausted: int = 0  # connects refused: no free port
    detail: str = ""  # why not by the datapath


@dataclass(frozen=True, slots=True)
class DatapathCounters:
    """What the kernel counts, read at scrape time."""

    verdicts: tuple[VerdictCounter, ...] = ()
    maps: tuple[MapFill, ...] = ()
    upstream_ports: UpstreamPorts | None = None


@dataclass(frozen=True, slots=True)
class ProxyCounters:
    """Totals since start: xDS responses, ACKs and NACKs by type URL, Envoy restarts."""

    xds_pushes: Mapping[str, int] = field(default_factory=dict)
    xds_acks: Mapping[str, int] = field(default_factory=dict)
    xds_nacks: Mapping[str, int] = field(default_factory=dict)
    envoy_restarts: int = 0


@dataclass(frozen=True, slots=True)
class FamilySupport:
    """Whether the datapath enforces policy for one address family."""

    version: int  # 4 | 6
    enforced: bool
    detail: str = ""  # when not enforced: what becomes of the family's packets, and why


class EndpointUnsupported(Exception):
    """The datapath cannot enforce policy for this endpoint as it is (e.g. an
    IPv6-only endpoint on a node with IPv6 disabled): it keeps the endpoint's
    traffic dropped, and trying again without a change would not help."""


class DatapathControl(Protocol):
    """The kernel side (redirect.datapath.Datapath behind agent/adapters/kernel_datapath.py)."""

    async def setup(self) -> None:
        """Global plumbing (pinned maps, proxy ip rule/route); idempotent."""
        ...

    async def close(self) -> None:
        """Release handles; never detaches: the kernel keeps enforcing."""
        ...

    async def attach_endpoint(
        self, endpoint_id: int, ifname: str, ipv4: IPv4Address | None, identity: int, ipv6: IPv6Address | None = None,
    ) -> None:
        """Attach programs to the endpoint's host interface; idempotent (adopts).
        Raises EndpointUnsupported for an endpoint it can only keep dropped."""
        ...

    def families(self) -> tuple[FamilySupport, ...]:
        """Per address family, whether policy is enforced for it (`ciliate status`)."""
        ...

    async def detach_endpoint(self, endpoint_id: int) -> None: ...

    async def attached_endpoints(self) -> list[KernelEndpoint]:
        """Every endpoint this install attached and has not detached (what the
        kernel still enforces for), whether or not the agent's table knows it."""
        ...

    async def apply(self, state: CompiledState) -> ApplyOutcome:
        """Make the kernel match `state` (the datapath diffs it against what the
        kernel holds, so unchanged endpoints cost a read, not a write)."""
        ...

    async def dump_policy(self, endpoint_id: int) -> list[DumpedEntry]: ...

    def flow_events(self) -> AsyncIterator[Mapping[str, Any]]:
        """Kernel verdict events as plain dicts (see agent.core.models.FlowEvent)."""
        ...

    async def counters(self) -> DatapathCounters:
        """The kernel's per-CPU verdict counters and every map's fill, now."""
        ...

    async def connections(self) -> set[tuple[str, str]]:
        """(source, destination) addresses of the live tracked flows, in the
        direction each was opened."""
        ...


class ProxyRejected(Exception):
    """Envoy NACKed the configuration; `detail` is Envoy's own error text."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ProxyTimeout(Exception):
    """Envoy did not acknowledge in time (not running, not connected, slow)."""


class ProxyControl(Protocol):
    async def start(self) -> None:
        """Start the xDS server and the supervised sidecar Envoy."""
        ...

    async def stop(self) -> None: ...

    async def publish(self, state: CompiledState, timeout: float) -> str:
        """Publish the L7 part of `state`; returns the ACKed version.

        Raises ProxyRejected on NACK, ProxyTimeout when no ACK came in time.
        """
        ...

    def status(self) -> Mapping[str, Any]:
        """Health of the proxy side (envoy running, acked version), for `status`."""
        ...

    def access_log(self) -> AsyncIterator[Mapping[str, Any]]:
        """Envoy access-log entries as plain dicts (see agent.core.models.FlowEvent)."""
        ...

    def counters(self) -> ProxyCounters:
        """xDS and Envoy lifecycle totals (in memory, cheap)."""
        ...


class Service(Protocol):
    """Something the daemon starts after the core and stops before it (the REST API)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class PolicyObjects:
    """Policy objects from an orchestrator's API that changed or appeared
    (source name -> the loaded object) and the ones that went away.

    A source name is what error lines and the status show, e.g.
    `k8s:CiliumNetworkPolicy/ns/name`; each object is one unit, taken whole
    or not at all, as a file is."""

    changed: Mapping[str, LoadedFile] = field(default_factory=dict)
    removed: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.changed or self.removed)


class ClusterEvents(Protocol):
    """What the core offers a ClusterSource (agent.core.agent.Agent is one)."""

    async def policy_objects_changed(self, objects: PolicyObjects) -> None: ...

    async def services_changed(self, services: Any) -> None:
        """The cluster's Services or their endpoints changed: `services` is the
        whole new snapshot, for ServicePeers.resolve."""
        ...

    async def endpoint_labels_changed(self, names: Iterable[str]) -> None:
        """The labels of these endpoints (by name, `namespace/pod`) may have
        changed: the core asks ClusterSource.endpoint_labels() again."""
        ...

    async def node_labels_changed(self) -> None:
        """This node's labels changed (its Node object was labelled): the
        core asks ClusterSource.node_labels() again."""
        ...

    def policies(self) -> Any:
        """Every policy's status (agent.core.models.PolicyList), to write back."""
        ...


class ClusterSource(Protocol):
    """Policies and endpoint labels from an orchestrator (the Kubernetes API
    server, agent/adapters/kubernetes/), and policy status written back."""

    async def start(self, events: ClusterEvents) -> None:
        """Begin watching; returns once the initial state was handed to
        `events` (raises if it could not be had in the source's sync timeout)."""
        ...

    async def stop(self) -> None: ...

    def endpoint_labels(self, name: str) -> Mapping[str, str] | None:
        """The labels of the endpoint named `namespace/pod`, or None when the
        source knows no such pod (not one of its pods, or not seen yet)."""
        ...

    def node_labels(self) -> Mapping[str, str] | None:
        """This node's labels as the orchestrator has them (the Node object's),
        or None when it knows no such node (then `--node-label` alone says)."""
        ...

    async def wait_endpoint_labels(self, name: str, timeout: float) -> Mapping[str, str] | None:
        """As endpoint_labels(), waiting up to `timeout` for the pod to be seen."""
        ...

    def endpoint_named_ports(self, name: str) -> list[dict[str, Any]] | None:
        """The named ports ({name, port, protocol}) the pod `namespace/pod`
        serves (its containers' ports), or None when the pod is not known."""
        ...

    def regenerated(self) -> None:
        """The policies' status may have changed (a regeneration ended)."""
        ...

    def health(self) -> Mapping[str, Any]:
        """{"ok": bool, "detail": str, ...} for `ciliate status`; not ok while
        the API server is unreachable (the last known state stays enforced)."""
        ...
