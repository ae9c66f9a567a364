"""The kinds the agent reads from the API server and how the client lists them.

Every call goes through the typed `kubernetes` client methods with
`_preload_content=False`: the agent reads plain JSON dicts for every kind
(no model objects: the policy parser and the label code take dicts)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client

CILIUM_GROUP, CILIUM_VERSION = "cilium.io", "v2"
CNP_PLURAL = "ciliumnetworkpolicies"
CCNP_PLURAL = "ciliumclusterwidenetworkpolicies"

KIND_CNP = "CiliumNetworkPolicy"
KIND_CCNP = "CiliumClusterwideNetworkPolicy"
KIND_NP = "NetworkPolicy"
KIND_NAMESPACE = "Namespace"
KIND_NODE = "Node"  # this node's own: its labels (node_labels.py)
KIND_POD = "Pod"
KIND_SERVICE = "Service"
KIND_ENDPOINTSLICE = "EndpointSlice"
SERVICE_KINDS = (KIND_SERVICE, KIND_ENDPOINTSLICE)  # for CNP toServices (services.py)
POLICY_KINDS = (KIND_CNP, KIND_CCNP, KIND_NP)
STATUS_KINDS = (KIND_CNP, KIND_CCNP)  # NetworkPolicy has no status to write (see node_status.py)


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    api_version: str
    list_call: Callable[..., Any]  # list (and, with watch=True, watch) every object of the kind

    def key(self, obj: dict[str, Any]) -> str:
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace")
        return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


def kinds(api: client.ApiClient, node_name: str) -> dict[str, Kind]:
    co = client.CustomObjectsApi(api)
    core = client.CoreV1Api(api)
    net = client.NetworkingV1Api(api)
    discovery = client.DiscoveryV1Api(api)
    cilium = f"{CILIUM_GROUP}/{CILIUM_VERSION}"
    return {
        KIND_CNP: Kind(KIND_CNP, cilium, functools.partial(co.list_cluster_custom_object, CILIUM_GROUP, CILIUM_VERSION, CNP_PLURAL)),
        KIND_CCNP: Kind(KIND_CCNP, cilium, functools.partial(co.list_cluster_custom_object, CILIUM_GROUP, CILIUM_VERSION, CCNP_PLURAL)),
        KIND_NP: Kind(KIND_NP, "networking.k8s.io/v1", net.list_network_policy_for_all_namespaces),
        KIND_NAMESPACE: Kind(KIND_NAMESPACE, "v1", core.list_namespace),
        # Only this node's Node: its labels are this node's labels.
        KIND_NODE: Kind(KIND_NODE, "v1", functools.partial(core.list_node, field_selector=f"metadata.name={node_name}")),
        # Only the pods scheduled here: a node never holds the whole cluster's pods.
        KIND_POD: Kind(KIND_POD, "v1", functools.partial(core.list_pod_for_all_namespaces, field_selector=f"spec.nodeName={node_name}")),
        KIND_SERVICE: Kind(KIND_SERVICE, "v1", core.list_service_for_all_namespaces),
        KIND_ENDPOINTSLICE: Kind(KIND_ENDPOINTSLICE, "discovery.k8s.io/v1", discovery.list_endpoint_slice_for_all_namespaces),
    }


def patch_status(api: client.ApiClient, kind: str, namespace: str | None, name: str, body: dict[str, Any], timeout: float) -> None:
    """JSON merge patch of the status subresource (only this node's key changes)."""
    co = client.CustomObjectsApi(api)
    if kind == KIND_CNP:
        co.patch_namespaced_custom_object_status(
            CILIUM_GROUP, CILIUM_VERSION, namespace or "default", CNP_PLURAL, name, body,
            _content_type="application/merge-patch+json", _request_timeout=timeout)
    elif kind == KIND_CCNP:
        co.patch_cluster_custom_object_status(
            CILIUM_GROUP, CILIUM_VERSION, CCNP_PLURAL, name, body,
            _content_type="application/merge-patch+json", _request_timeout=timeout)
    else:
        raise ValueError(f"{kind} has no status subresource the agent writes")
