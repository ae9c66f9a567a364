"""This node's Node object as the node's labels: what a host policy's
`nodeSelector` and `fromNodes`/`toNodes` select the node by (Cilium takes
them from the Node object too). The Node's `metadata.labels` as they are,
without a source prefix (the same keys as `--node-label`), minus any that is
no Kubernetes label (pod_labels.syntax_refusal: the real API server refuses
them, a simulator may not). Pure: no I/O; the caller logs what is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.adapters.kubernetes.pod_labels import syntax_refusal


def node_labels(node: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """(the labels taken, the ones dropped: key -> why)."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    taken: dict[str, str] = {}
    dropped: dict[str, str] = {}
    for key, value in labels.items():
        why = syntax_refusal(key, value)
        if why is None:
            taken[key] = value
        else:
            dropped[key] = why
    return taken, dropped
