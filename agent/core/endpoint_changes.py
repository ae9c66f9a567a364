"""Endpoint changes from outside the agent: the CNI plugin creates and
deletes endpoints (through the API), an operator configures one, the
Kubernetes API relabels pods. Each change is written to the endpoint table
on the event loop and marks the endpoint for the next regeneration, which a
caller may wait for. No I/O of its own: the table persists, the queue
regenerates.
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.core.endpoint_table import EndpointTable
from agent.core.models import Endpoint, EndpointConfig, EndpointCreate, NamedPortSpec
from agent.core.ports import ClusterSource
from agent.core.regeneration_queue import RegenerationQueue


class EndpointChanges:
    def __init__(self, table: EndpointTable, queue: RegenerationQueue, cluster: ClusterSource | None, pod_wait: float) -> None:
        """`cluster`: Kubernetes mode, where a pod's labels come from the API
        server; `pod_wait`: how long a create waits there for its Pod to be seen."""
        self.table = table
        self.queue = queue
        self.cluster = cluster
        self.pod_wait = pod_wait

    async def _regenerate(self, endpoint_ids: list[int], reason: str, wait: float | None) -> None:
        # Wait for the batch that carries this change, not merely the end of
        # one already in flight (it was snapshotted before the change).
        ticket = self.queue.ticket()
        self.queue.mark(endpoint_ids, reason=reason)
        if wait:
            await self.queue.wait_for(ticket, wait)

    async def create(self, req: EndpointCreate, wait: float | None) -> tuple[Endpoint, bool]:
        # In the loop, not a thread: the table is read by every API call, and the
        # write (one small atomic file) must not be reordered with the next one.
        if self.cluster is not None and req.name:
            # Kubernetes mode: the Pod's labels, not what CNI could tell. A pod
            # not seen (yet) keeps CNI's labels and is re-identified once seen.
            labels = await self.cluster.wait_endpoint_labels(req.name, self.pod_wait)
            if labels is not None:
                ports = self.cluster.endpoint_named_ports(req.name) or []
                req = req.model_copy(update={"labels": dict(labels), "named_ports": [NamedPortSpec(**p) for p in ports]})
        rec, created = self.table.upsert(req)
        await self._regenerate([rec.id], f"endpoint {rec.id} {'created' if created else 'updated'}", wait)
        view = self.table.view(rec.id)
        assert view is not None
        return view, created

    async def configure(self, endpoint_id: int, cfg: EndpointConfig, wait: float | None) -> Endpoint | None:
        """Apply the endpoint's settings (audit mode) at the next regeneration;
        nothing restarts: the kernel's flags and Envoy's listeners change in place."""
        rec = self.table.record(endpoint_id)
        if rec is None:
            return None
        audit = cfg.policy_audit_mode if "policy_audit_mode" in cfg.model_fields_set else rec.policy_audit_mode
        if audit != rec.policy_audit_mode:
            self.table.configure(endpoint_id, audit)
            await self._regenerate([endpoint_id], f"endpoint {endpoint_id} policy audit mode {'on' if audit else 'off'}", wait)
        return self.table.view(endpoint_id)

    async def delete(self, endpoint_id: int) -> Endpoint | None:
        view = self.table.view(endpoint_id)
        if view is None:
            return None
        self.table.remove(endpoint_id)
        await self._regenerate([endpoint_id], f"endpoint {endpoint_id} deleted", None)
        return view

    def names(self) -> set[str]:
        """The names (`namespace/pod`) of the endpoints that have one."""
        return {rec.name for i in self.table.ids() if (rec := self.table.record(i)) is not None and rec.name}

    async def relabel(self, names: Iterable[str]) -> None:
        """Re-identify the endpoints of these pods whose labels changed, in place:
        same endpoint id and interface, new identity at the next regeneration."""
        if self.cluster is None:
            return
        wanted = set(names)
        marked = []
        for eid in self.table.ids():
            rec = self.table.record(eid)
            if rec is None or rec.name not in wanted:
                continue
            labels = self.cluster.endpoint_labels(rec.name)
            ports = [NamedPortSpec(**p) for p in self.cluster.endpoint_named_ports(rec.name) or []]
            if labels is not None and (dict(labels) != rec.labels or ports != rec.named_ports):
                self.table.relabel(eid, dict(labels), ports)
                marked.append(eid)
        if marked:
            self.queue.mark(marked, reason="pod labels or named ports changed")
