"""A Pod and its Namespace as endpoint labels, and which labels a Pod may set.

Whoever may create a Pod chooses its `metadata.labels`, but policies trust
some labels to say where a pod is and what it runs as. As in Cilium, those
are never taken from the Pod's labels; the agent sets them itself:
- `io.kubernetes.pod.namespace`: the Pod's `metadata.namespace`;
- every key that starts with `io.cilium.k8s`: the Namespace object's labels as
  `io.cilium.k8s.namespace.labels.<key>` (what `namespaceSelector` matches),
  the service account from `spec.serviceAccountName`, and the cluster
  (`io.cilium.k8s.policy.cluster`, CLUSTER_NAME); any other key there is
  dropped too, so a label the agent may set some day is not a Pod's today;
- a key or value outside Kubernetes' label syntax. The real API server
  refuses them, a hostile one or a simulator may not: a ':' in a key would
  give the label a source of its own (`reserved:host`), an '=' would end
  the key early in the canonical `source:key=value` form.
Pure: no I/O; the caller logs and counts what `refusal` turns away.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from policy.endpoint import DEFAULT_NAMESPACE, NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX
from policy.labels import key_problem, value_problem

# The agent's own keys: Cilium drops every pod label with this prefix (no
# dot: `io.cilium.k8s/x` is not a Pod's to set either).
AGENT_PREFIX = "io.cilium.k8s"
SERVICE_ACCOUNT_LABEL = "io.cilium.k8s.policy.serviceaccount"
CLUSTER_LABEL = "io.cilium.k8s.policy.cluster"
# One cluster and no cluster mesh, so no --cluster-name: Cilium's default,
# so a policy written for Cilium that selects on it means the same here.
CLUSTER_NAME = "default"


def refusal(key: str, value: Any) -> str | None:
    """Why a Pod may not set this label itself, or None when it may."""
    if key == NAMESPACE_LABEL:
        return "the namespace is the Pod's metadata.namespace"
    if key.startswith(NAMESPACE_LABELS_PREFIX):
        return "namespace labels come from the Namespace object"
    if key == SERVICE_ACCOUNT_LABEL:
        return "the service account is the Pod's spec.serviceAccountName"
    if key.startswith(AGENT_PREFIX):
        return f"keys starting with {AGENT_PREFIX} are set by the agent"
    return syntax_refusal(key, value)


def syntax_refusal(key: str, value: Any) -> str | None:
    """Why this is no Kubernetes label (the last item of the module
    docstring), or None; what any object's labels must pass, a Node's too."""
    if ":" in key:
        return f"a ':' would make it a label of source {key.partition(':')[0]!r}"
    if "=" in key:
        return "an '=' would end the key early in the label's source:key=value form"
    if problem := key_problem(key):
        return f"not a Kubernetes label: {problem}"
    if not isinstance(value, str):
        return f"not a Kubernetes label: its value is {type(value).__name__}, not a string"
    if problem := value_problem(value):
        return f"not a Kubernetes label: {problem}"
    return None


def dropped_labels(pod: Mapping[str, Any]) -> dict[str, str]:
    """The Pod's labels it may not set: key -> why."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return {k: why for k, v in labels.items() if (why := refusal(k, v)) is not None}


def endpoint_labels(pod: Mapping[str, Any], namespace: Mapping[str, Any] | None) -> dict[str, str]:
    """The endpoint's labels as Cilium derives them, all `k8s:`: the Pod's own
    labels that pass `refusal`, then its namespace, the Namespace's labels,
    its service account and the cluster, which only the agent sets."""
    meta = pod.get("metadata") or {}
    out = {f"k8s:{k}": v for k, v in (meta.get("labels") or {}).items() if refusal(k, v) is None}
    out[f"k8s:{NAMESPACE_LABEL}"] = str(meta.get("namespace") or DEFAULT_NAMESPACE)
    ns_labels = ((namespace or {}).get("metadata") or {}).get("labels") or {}
    out.update({f"k8s:{NAMESPACE_LABELS_PREFIX}{k}": str(v) for k, v in ns_labels.items()})
    sa = (pod.get("spec") or {}).get("serviceAccountName")
    if sa:
        out[f"k8s:{SERVICE_ACCOUNT_LABEL}"] = str(sa)
    out[f"k8s:{CLUSTER_LABEL}"] = CLUSTER_NAME
    return out
