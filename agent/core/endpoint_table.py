"""The endpoint table: persisted records plus each endpoint's live state.

Records (what CNI registered) are written to the state directory on every
change; the live part (identity, state, reason, revision) is recomputed by
regeneration after a restart. The regeneration queue's tickets let the API answer a
create once the endpoint's policy is in place. File I/O via StateStore only.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address

from agent.core.models import Endpoint, EndpointCreate, EndpointRecord, EndpointState, NamedPortSpec
from agent.core.ports import Failure
from agent.core.state_store import StateStore

ENDPOINT_ID_MIN = 1
ENDPOINT_ID_MAX = 4095  # as Cilium: ids fit the 12 bits some datapath keys reserve


class EndpointTableFull(Exception):
    pass


class AddressInUse(ValueError):
    """The IPv4 or IPv6 address belongs to another endpoint: two endpoints cannot share one."""


@dataclass(slots=True)
class LiveState:
    state: EndpointState = EndpointState.WAITING_FOR_IDENTITY
    reason: str | None = None
    identity: int | None = None
    policy_revision: int = 0
    ingress_enforced: bool = False
    egress_enforced: bool = False
    policies: tuple[str, ...] = ()
    audited: bool = False
    failure: Failure | None = None
    attached: bool = False
    generation: int = 0  # bumped on every state change, for waiters


@dataclass(slots=True)
class _Row:
    record: EndpointRecord
    live: LiveState = field(default_factory=LiveState)


class EndpointTable:
    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._rows: dict[int, _Row] = {}
        self._changed = asyncio.Condition()
        self._by_address: dict[IPv4Address | IPv6Address, int] | None = None  # built on demand, dropped on change

    def load(self) -> list[int]:
        for rec in self._store.load_endpoints():
            self._rows[rec.id] = _Row(rec)
        self._by_address = None
        return sorted(self._rows)

    def _persist(self) -> None:
        # Every change of a record passes here: the address index is rebuilt when next asked.
        self._by_address = None
        self._store.save_endpoints([r.record for r in self._rows.values()])

    # --- records -----------------------------------------------------------
    def find(self, container_id: str, ifname: str) -> EndpointRecord | None:
        for row in self._rows.values():
            if row.record.container_id == container_id and row.record.ifname == ifname:
                return row.record
        return None

    def restore(self, records: list[EndpointRecord]) -> None:
        """Put back endpoints the kernel still serves under their ids (see
        agent/core/endpoint_restore.py); one write of endpoints.json for all."""
        for rec in records:
            if rec.id in self._rows:
                raise ValueError(f"endpoint {rec.id} is already in the table")
        if not records:
            return
        for rec in records:
            self._rows[rec.id] = _Row(rec)
        self._persist()

    def upsert(self, req: EndpointCreate) -> tuple[EndpointRecord, bool]:
        """Add or replace the endpoint of (container_id, ifname); returns (record, created)."""
        # The host veth's name is derived from (container_id, ifname), so it
        # also finds a restored endpoint whose container id was lost.
        existing = self.find(req.container_id, req.ifname) or next(
            (r.record for r in self._rows.values() if r.record.host_ifname == req.host_ifname), None
        )
        for family in ("ipv4", "ipv6"):
            addr = getattr(req, family)
            if addr is None:
                continue
            other = next((r.record for r in self._rows.values() if getattr(r.record, family) == addr and r.record is not existing), None)
            if other is not None:
                raise AddressInUse(f"{family}: {addr} is already the address of endpoint {other.id} ({other.container_id}/{other.ifname})")
        if existing is not None:
            # Settings made through the API (audit mode) outlive a CNI re-ADD.
            rec = EndpointRecord(id=existing.id, policy_audit_mode=existing.policy_audit_mode, **req.model_dump())
            if rec == existing:
                return rec, False
            row = self._rows[existing.id]
            same_if = rec.host_ifname == existing.host_ifname
            self._rows[existing.id] = _Row(rec, LiveState(attached=row.live.attached and same_if, identity=row.live.identity))
            self._persist()
            return rec, False
        new_id = next((i for i in range(ENDPOINT_ID_MIN, ENDPOINT_ID_MAX + 1) if i not in self._rows), None)
        if new_id is None:
            raise EndpointTableFull(f"all {ENDPOINT_ID_MAX} endpoint ids are in use")
        rec = EndpointRecord(id=new_id, **req.model_dump())
        self._rows[new_id] = _Row(rec)
        self._persist()
        return rec, True

    def relabel(self, endpoint_id: int, labels: dict[str, str], named_ports: list[NamedPortSpec] | None = None) -> None:
        """New labels (and named ports, unless None) for an endpoint (its
        Pod's changed): same id and interface, live state kept until the
        regeneration gives it its new identity."""
        row = self._rows.get(endpoint_id)
        if row is None:
            return
        update: dict[str, object] = {}
        if row.record.labels != labels:
            update["labels"] = dict(labels)
        if named_ports is not None and row.record.named_ports != named_ports:
            update["named_ports"] = list(named_ports)
        if not update:
            return
        row.record = row.record.model_copy(update=update)
        self._persist()

    def configure(self, endpoint_id: int, policy_audit_mode: bool | None) -> EndpointRecord | None:
        """Persist the endpoint's settings; None when it does not exist."""
        row = self._rows.get(endpoint_id)
        if row is None:
            return None
        if row.record.policy_audit_mode != policy_audit_mode:
            row.record = row.record.model_copy(update={"policy_audit_mode": policy_audit_mode})
            self._persist()
        return row.record

    def remove(self, endpoint_id: int) -> EndpointRecord | None:
        row = self._rows.pop(endpoint_id, None)
        if row is not None:
            self._persist()
        return row.record if row else None

    def holding(self, addr: IPv4Address | IPv6Address) -> EndpointRecord | None:
        """The endpoint whose IPv4 or IPv6 address `addr` is (flow events name
        endpoints by address, many per second: an index, not a scan)."""
        if self._by_address is None:
            index: dict[IPv4Address | IPv6Address, int] = {}
            for eid in sorted(self._rows, reverse=True):  # the lowest id wins, as the ipcache picks
                rec = self._rows[eid].record
                index.update({a: eid for a in (rec.ipv4, rec.ipv6) if a is not None})
            self._by_address = index
        eid = self._by_address.get(addr)
        return self._rows[eid].record if eid is not None else None

    def record(self, endpoint_id: int) -> EndpointRecord | None:
        row = self._rows.get(endpoint_id)
        return row.record if row else None

    def ids(self) -> list[int]:
        return sorted(self._rows)

    def __contains__(self, endpoint_id: object) -> bool:
        return endpoint_id in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    # --- live state ----------------------------------------------------------
    def live(self, endpoint_id: int) -> LiveState | None:
        row = self._rows.get(endpoint_id)
        return row.live if row else None

    def set_live(self, endpoint_id: int, **changes: object) -> None:
        row = self._rows.get(endpoint_id)
        if row is None:
            return
        row.live = replace(row.live, generation=row.live.generation + 1, **changes)  # type: ignore[arg-type]

    async def notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def view(self, endpoint_id: int) -> Endpoint | None:
        row = self._rows.get(endpoint_id)
        if row is None:
            return None
        live = row.live
        return Endpoint(
            **row.record.model_dump(),
            identity=live.identity,
            state=live.state,
            reason=live.reason,
            policy_revision=live.policy_revision,
            ingress_enforced=live.ingress_enforced,
            egress_enforced=live.egress_enforced,
            policies=sorted(live.policies),
            audited=live.audited,
        )

    def views(self) -> list[Endpoint]:
        return [v for i in self.ids() if (v := self.view(i)) is not None]
