"""Wire shapes of the agent's REST API and of its persisted endpoint table.

Every request and response body is one of these pydantic models; the OpenAPI
schema (agent/api/openapi.py) is generated from them, and the CLI parses replies
with them. Pure data, no I/O.
"""

from __future__ import annotations

import enum
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from agent.core.addresses import ipv6_problem
from policy.labels import selector_key_problem, value_problem
from policy.named_ports import port_name_problem

IFNAMSIZ = 16  # the kernel's limit, NUL included: names hold at most 15 bytes


def _ifname_ok(name: str) -> str:
    # The kernel's dev_valid_name(), and printable ASCII only: the name ends
    # up in paths, tc and netlink calls, and log lines.
    if not name or len(name.encode()) >= IFNAMSIZ:
        raise ValueError(f"interface name must be 1-{IFNAMSIZ - 1} bytes")
    if name in (".", ".."):
        raise ValueError(f"{name!r} is not a valid interface name")
    bad = next((c for c in name if c in "/:" or not c.isascii() or not c.isprintable() or c.isspace()), None)
    if bad is not None:
        raise ValueError(f"interface name must not contain {bad!r} (only printable ASCII without '/', ':' or spaces)")
    return name


def _label_key_ok(key: str) -> str:
    if "=" in key:  # the canonical "source:key=value" form would split here
        raise ValueError("label key must not contain '='")
    problem = selector_key_problem(key)
    if problem:
        raise ValueError(problem)
    return key


def _label_value_ok(value: str) -> str:
    problem = value_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _ipv6_ok(addr: IPv6Address) -> IPv6Address:
    problem = ipv6_problem(addr)
    if problem:
        raise ValueError(problem)
    return addr


InterfaceName = Annotated[str, AfterValidator(_ifname_ok)]


def _port_name_ok(name: str) -> str:
    problem = port_name_problem(name)
    if problem:
        raise ValueError(problem)
    return name.lower()


PortName = Annotated[str, AfterValidator(_port_name_ok)]
# Global unicast or unique local only (agent/core/addresses.py); reported at ipv6.
EndpointIPv6 = Annotated[IPv6Address, AfterValidator(_ipv6_ok)]
# Kubernetes label syntax (policy/labels.py), optionally with a Cilium source
# ("k8s:app"). A bad label is reported at labels.<key>.
LabelKey = Annotated[str, AfterValidator(_label_key_ok)]
LabelValue = Annotated[str, AfterValidator(_label_value_ok)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EndpointState(enum.StrEnum):
    WAITING_FOR_IDENTITY = "waiting-for-identity"
    REGENERATING = "regenerating"
    READY = "ready"
    NOT_READY = "not-ready"


class NamedPortSpec(_Model):
    """A port the endpoint serves under a name (a container port), which
    policies may name instead of its number (`port: http`)."""

    name: PortName
    port: int = Field(ge=1, le=65535)
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"


def _unique_names(ports: list[NamedPortSpec]) -> list[NamedPortSpec]:
    # Kubernetes refuses a Pod whose containers name two ports alike: which
    # number would `port: http` mean?
    seen: set[str] = set()
    for p in ports:
        if p.name in seen:
            raise ValueError(f"port name {p.name!r} is given twice")
        seen.add(p.name)
    return ports


class EndpointCreate(_Model):
    """Registers a pod's interface; sent by ciliate-cni after it wired the veth."""

    container_id: str = Field(min_length=1, max_length=256, description="CNI_CONTAINERID")
    ifname: InterfaceName = Field(default="eth0", max_length=15, description="interface inside the pod")
    host_ifname: InterfaceName = Field(max_length=15, description="host side of the veth pair")
    netns: str | None = Field(default=None, max_length=4096, description="path of the pod's network namespace")
    ipv4: IPv4Address | None = None
    ipv6: EndpointIPv6 | None = Field(
        default=None, description="global unicast or unique local"
    )
    labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, description="Kubernetes label syntax; a key may carry a source, e.g. k8s:app"
    )
    name: str | None = Field(default=None, max_length=512, description="display name, e.g. namespace/pod")
    named_ports: Annotated[list[NamedPortSpec], AfterValidator(_unique_names)] = Field(
        default_factory=list, description="ports the endpoint serves by name; in Kubernetes mode the Pod's container ports"
    )


class EndpointRecord(EndpointCreate):
    """What the agent persists for one endpoint (create request plus its id)."""

    id: int = Field(ge=1, le=65535)
    # Records are checked as loose as the agent that wrote them was: a label
    # an older agent accepted must not stop this one from starting.
    ifname: str = Field(default="eth0", min_length=1, max_length=15, description="interface inside the pod")
    host_ifname: str = Field(min_length=1, max_length=15, description="host side of the veth pair")
    labels: dict[str, str] = Field(default_factory=dict)
    # Absent in records written before dual-stack: they load as IPv4-only.
    ipv6: IPv6Address | None = None
    netns: str | None = Field(default=None, description="path of the pod's network namespace")
    name: str | None = Field(default=None, description="display name, e.g. namespace/pod")
    policy_audit_mode: bool | None = Field(
        default=None,
        description="would-be policy drops pass and are reported as audit; null: the agent's --policy-audit-mode",
    )


class EndpointConfig(_Model):
    """PATCH /v1/endpoints/{id}/config: the endpoint's settings (absent: unchanged)."""

    policy_audit_mode: bool | None = Field(
        default=None, description="true: audit (let through and report what policy would drop); false: enforce"
    )


class Endpoint(EndpointRecord):
    identity: int | None = None
    state: EndpointState
    reason: str | None = Field(default=None, description="why the endpoint is not ready")
    policy_revision: int = Field(default=0, description="policy revision the datapath enforces for it")
    ingress_enforced: bool = False
    egress_enforced: bool = False
    policies: list[str] = Field(default_factory=list, description="policies selecting this endpoint")
    audited: bool = Field(default=False, description="the datapath and proxy audit this endpoint's policy now")


class EndpointList(_Model):
    endpoints: list[Endpoint]


class PolicyErrorKind(enum.StrEnum):  # StrEnum: formats as its value ("map-full") in text output
    VALIDATION = "validation"
    MAP_FULL = "map-full"
    ENVOY_NACK = "envoy-nack"
    ENVOY_TIMEOUT = "envoy-timeout"
    DATAPATH = "datapath"


class PolicyStatusError(_Model):
    kind: PolicyErrorKind
    message: str


class PolicyStatus(_Model):
    name: str = Field(description="namespace/name, or name for clusterwide kinds, or the file when unparsable")
    kind: str | None = None
    source: str = Field(description="file the policy was read from")
    state: Literal["enforced", "pending", "not-enforced", "error"] = Field(
        description="not-enforced: its own rules are fine, but an endpoint it selects failed because of another policy (see reason)"
    )
    reason: str | None = Field(default=None, description="why it is not enforced on every endpoint it selects")
    endpoints: int = Field(default=0, description="endpoints enforcing it")
    revision: int = Field(default=0, description="policy revision it is enforced at")
    errors: list[PolicyStatusError] = Field(default_factory=list)
    stale: bool = Field(default=False, description="a newer version failed validation; this one is still enforced")
    warnings: list[str] = Field(default_factory=list)


class PolicyList(_Model):
    revision: int
    policies: list[PolicyStatus]


class Identity(_Model):
    id: int
    labels: list[str]
    reserved: bool
    endpoints: list[int] = Field(default_factory=list)


class IdentityList(_Model):
    identities: list[Identity]


class FQDNCacheEntry(_Model):
    endpoint: int
    name: str = Field(description="canonical: lower case, trailing dot")
    address: str
    expires: float = Field(description="wall-clock seconds (Unix time) when the address leaves the policy")
    ttl: int = Field(description="seconds left, 0 once expired")


class FQDNCacheList(_Model):
    running: bool = Field(description="whether the agent runs its DNS proxy (`--no-dns-proxy` turns it off)")
    entries: list[FQDNCacheEntry]


class Health(_Model):
    ok: bool
    checks: dict[str, str] = Field(description="component -> ok or what is wrong")


class ConntrackFill(_Model):
    entries: int = Field(description="live (unexpired) entries in ciliate_ct; a flow takes two")
    capacity: int
    percent: float
    warning: str | None = Field(default=None, description="set at or above 90 %: what a full table costs and where to look")


class UpstreamPortsStatus(_Model):
    ports: str = Field(description="the range the proxy's client-address upstreams take their source ports from")
    by_datapath: bool = Field(description="true: the agent's range, assigned by the datapath; false: the node's ip_local_port_range")
    assigned: int = 0
    exhausted: int = Field(default=0, description="upstream connects refused because no port of the range was free")
    detail: str = Field(default="", description="why the datapath does not assign them")


class FamilyStatus(_Model):
    enforced: bool = Field(description="the datapath enforces policy for this address family")
    detail: str = Field(default="", description="when not enforced: what becomes of the family's packets, and why")
    endpoints: int = Field(default=0, description="endpoints holding an address of this family")


class Status(_Model):
    ok: bool
    revision: int
    endpoints: dict[str, int] = Field(description="endpoint state -> count")
    policies: dict[str, int] = Field(description="policy state -> count")
    proxy: dict[str, str | int | bool | None]
    state_dir: str
    policy_dir: str | None = None
    kubernetes: dict[str, str | int | float | bool | None] | None = Field(
        default=None, description="Kubernetes mode: API server reachable, since when, objects watched (absent without Kubernetes)"
    )
    kvstore: dict[str, str | int | float | bool | None] | None = Field(
        default=None, description="cluster mode: the shared store reachable, lease, remote nodes/endpoints/identities (absent on a lone node)"
    )
    conntrack: ConntrackFill | None = Field(
        default=None, description="the datapath's connection-tracking table, read with the status (a failed read shows the last one; absent if none succeeded)"
    )
    upstream_ports: UpstreamPortsStatus | None = Field(
        default=None, description="source ports of the proxy's upstream connections that keep the client's address (absent until the datapath is set up)"
    )
    families: dict[str, FamilyStatus] = Field(
        default_factory=dict, description='per address family ("ipv4", "ipv6"): whether the datapath enforces policy for it'
    )
    host_firewall: HostFirewallStatus | None = Field(
        default=None, description="host policies: the node as an endpoint (absent without --host-firewall)"
    )


class HostFirewallStatus(_Model):
    """The node as an endpoint (host policies): where and how its policy is enforced."""

    endpoint_id: int = Field(description="the host endpoint's id in flows and `ciliate bpf policy get`")
    devices: list[str] = Field(description="devices where the node's own traffic is judged (beside pods' veths)")
    node_labels: dict[str, str] = Field(description="the labels nodeSelector matches")
    ingress_enforced: bool
    egress_enforced: bool
    audit: bool = Field(description="what the node's policy would drop passes and is reported as AUDIT")
    policies: list[str] = Field(description="host policies selecting this node")
    always_reach: list[str] = Field(description="the agent's own peers, reachable whatever the node's policy says")


class BpfPolicyEntry(_Model):
    identity: int
    labels: list[str] = Field(default_factory=list)
    direction: str
    protocol: str
    ports: str
    verdict: str
    proxy_port: int = 0


class BpfPolicyDump(_Model):
    endpoint_id: int
    entries: list[BpfPolicyEntry]


FlowType = Literal["drop", "forward", "redirect", "audit", "l7", "dns", "policy-verdict", "agent"]


class FlowEvent(BaseModel):
    """One line of the monitor stream: a kernel verdict or an Envoy access-log entry."""

    model_config = ConfigDict(frozen=True, extra="allow")

    time: float
    type: FlowType
    endpoint_id: int | None = None
    direction: str | None = None
    protocol: str | None = None
    src_ip: str | None = None
    src_port: int | None = None
    dst_ip: str | None = None
    dst_port: int | None = None
    src_identity: int | None = None
    dst_identity: int | None = None
    src_labels: list[str] = Field(default_factory=list)
    dst_labels: list[str] = Field(default_factory=list)
    src_endpoint_id: int | None = Field(default=None, description="local endpoint holding the source address")
    dst_endpoint_id: int | None = Field(default=None, description="local endpoint holding the destination address")
    src_pod: str | None = Field(default=None, description="pod name of the source, when known")
    src_namespace: str | None = None
    dst_pod: str | None = Field(default=None, description="pod name of the destination, when known")
    dst_namespace: str | None = None
    verdict: str | None = None
    reason: str | None = None
    method: str | None = None
    path: str | None = None
    status: int | None = None
    dns_name: str | None = Field(default=None, description="DNS events: the name asked for (canonical)")
    dns_type: str | None = Field(default=None, description="DNS events: the query type (A, AAAA, ...)")
    dns_rcode: str | None = Field(default=None, description="DNS events: the answer's code (NOERROR, REFUSED, ...)")
    dns_addresses: list[str] | None = Field(default=None, description="DNS events: the answer's addresses")
    summary: str | None = None


class ErrorBody(_Model):
    error: str
    detail: str | None = None
