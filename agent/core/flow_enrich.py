"""Say who is on each side of a flow event: identity, labels, pod name and namespace.

Kernel events arrive with both identities (the datapath looked them up);
Envoy's access-log entries only with addresses. Both are completed here from
the compiled state the kernel enforces (its ipcache gives an address's
identity exactly as the datapath's LPM lookup does, and its endpoints say
which local endpoint owns an address) and from the endpoint table (the pod's
display name and labels as the CNI plugin registered them). Pure: reads the
state it is handed, no I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from agent.core.endpoint_table import EndpointTable
from agent.core.models import EndpointRecord
from policy.compiled import CompiledState

NAMESPACE_LABEL = "io.kubernetes.pod.namespace"


def pod_of(rec: EndpointRecord) -> tuple[str | None, str | None]:
    """(pod name, namespace) of an endpoint, as far as its record tells.

    The CNI plugin names an endpoint "namespace/pod" when the runtime passed
    K8S_POD_NAMESPACE and K8S_POD_NAME; the namespace label (with or without
    its "k8s:" source) stands in when the name has no namespace part."""
    ns = next((v for k, v in rec.labels.items() if k.rsplit(":", 1)[-1] == NAMESPACE_LABEL), None)
    name = rec.name
    if name and "/" in name:
        ns_part, _, pod = name.partition("/")
        return pod or None, ns_part or ns
    return name or None, ns


def _ip(raw: object) -> IPv4Address | IPv6Address | None:
    if not isinstance(raw, str) or not raw:
        return None
    try:
        return ip_address(raw)
    except ValueError:
        return None


class FlowEnricher:
    def __init__(
        self,
        table: EndpointTable,
        state: Callable[[], CompiledState | None],
        labels: Callable[[], Mapping[int, frozenset[str]]],
    ) -> None:
        """`state`: the compiled state the kernel enforces now (None before
        the first regeneration); `labels`: every identity's labels (the
        allocator's, which knows identities before any compile)."""
        self._table = table
        self._state = state
        self._labels = labels

    def _local(self, addr: IPv4Address | IPv6Address | None, state: CompiledState | None) -> tuple[int | None, int | None]:
        """(endpoint id, identity) of the local endpoint holding `addr`, else (None, None).
        IPv4: the compiled state the kernel enforces. IPv6: the endpoint table
        (the datapath enforces no IPv6 yet), with the identity the endpoint has now."""
        if addr is None:
            return None, None
        if addr.version == 4:
            ep = state.endpoint_by_ip(addr) if state is not None else None
            return (ep.endpoint_id, ep.identity) if ep is not None else (None, None)
        rec = self._table.holding(addr)
        live = self._table.live(rec.id) if rec is not None else None
        return (rec.id, live.identity) if rec is not None and live is not None else (None, None)

    def enrich(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        data = dict(raw)
        data.setdefault("time", time.time())
        state = self._state()
        labels: Mapping[int, frozenset[str]] | None = None
        for side in ("src", "dst"):
            addr = _ip(data.get(f"{side}_ip"))
            eid, local_identity = self._local(addr, state)
            if not data.get(f"{side}_identity"):
                ident = local_identity if eid is not None else (state.identity_of(addr) if state is not None and addr is not None else None)
                data[f"{side}_identity"] = ident or None
            ident = data.get(f"{side}_identity")
            if not data.get(f"{side}_labels") and ident:
                if labels is None:
                    labels = (state.identity_labels if state is not None else {}) or self._labels()
                found = labels.get(ident)
                if found is None and state is not None:
                    found = self._labels().get(ident)
                data[f"{side}_labels"] = sorted(found or ())
            rec = self._table.record(eid) if eid is not None else None
            if rec is not None:
                pod, ns = pod_of(rec)
                data.setdefault(f"{side}_endpoint_id", rec.id)
                if pod:
                    data.setdefault(f"{side}_pod", pod)
                if ns:
                    data.setdefault(f"{side}_namespace", ns)
        return data
