"""The kinds kubesim serves, described once for routing, discovery and storage."""

from __future__ import annotations

from dataclasses import dataclass, field

# The verbs a real API server lists for a resource with these handlers.
MAIN_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
STATUS_VERBS = ("get", "patch", "update")


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for the core group
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    # A status subresource: writes to the main resource keep the stored status.
    has_status: bool = False
    # Whether metadata.generation is kept (bumped when anything outside metadata/status changes).
    has_generation: bool = True
    # Field-selector labels beyond metadata.name/metadata.namespace (as the real server allows per kind).
    field_labels: tuple[str, ...] = ()
    # Custom resources: items of a list carry kind/apiVersion, strategic merge patch is refused.
    custom: bool = False
    initial_status: dict | None = field(default=None, compare=False, hash=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """`pods`, `ciliumnetworkpolicies.cilium.io`: how error messages name the resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES: tuple[ResourceType, ...] = (
    ResourceType(
        group="", version="v1", plural="namespaces", singular="namespace", kind="Namespace",
        namespaced=False, short_names=("ns",), has_status=True, has_generation=False,
        field_labels=("status.phase",), initial_status={"phase": "Active"},
    ),
    ResourceType(
        # Registered by each kubelet; its metadata.labels are what host
        # policies (nodeSelector) and fromNodes/toNodes select.
        group="", version="v1", plural="nodes", singular="node", kind="Node",
        namespaced=False, short_names=("no",), has_status=True, has_generation=False,
        field_labels=("spec.unschedulable",),
    ),
    ResourceType(
        group="", version="v1", plural="pods", singular="pod", kind="Pod", namespaced=True,
        short_names=("po",), categories=("all",), has_status=True,
        field_labels=(
            "spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
            "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName",
        ),
        initial_status={"phase": "Pending"},
    ),
    ResourceType(
        group="", version="v1", plural="services", singular="service", kind="Service", namespaced=True,
        short_names=("svc",), categories=("all",), has_status=True, has_generation=False,
        initial_status={"loadBalancer": {}},
    ),
    ResourceType(
        group="discovery.k8s.io", version="v1", plural="endpointslices", singular="endpointslice",
        kind="EndpointSlice", namespaced=True, has_generation=False,
    ),
    ResourceType(
        group="networking.k8s.io", version="v1", plural="networkpolicies", singular="networkpolicy",
        kind="NetworkPolicy", namespaced=True, short_names=("netpol",),
    ),
    ResourceType(
        group="cilium.io", version="v2", plural="ciliumnetworkpolicies",
        singular="ciliumnetworkpolicy", kind="CiliumNetworkPolicy", namespaced=True,
        short_names=("cnp", "ciliumnp"), categories=("cilium", "ciliumpolicy"), has_status=True,
        custom=True,
    ),
    ResourceType(
        group="cilium.io", version="v2", plural="ciliumclusterwidenetworkpolicies",
        singular="ciliumclusterwidenetworkpolicy", kind="CiliumClusterwideNetworkPolicy",
        namespaced=False, short_names=("ccnp",), categories=("cilium", "ciliumpolicy"),
        has_status=True, custom=True,
    ),
)


def find(group: str, version: str, plural: str) -> ResourceType | None:
    for r in RESOURCES:
        if (r.group, r.version, r.plural) == (group, version, plural):
            return r
    return None


def group_versions() -> dict[str, list[str]]:
    """Named groups (not core) and their versions, in declaration order."""
    out: dict[str, list[str]] = {}
    for r in RESOURCES:
        if r.group and r.version not in out.setdefault(r.group, []):
            out[r.group].append(r.version)
    return out
