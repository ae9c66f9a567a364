"""What this node publishes, and the reconciler that makes etcd hold it.

Desired state lives in memory: the node record, the endpoints (IP ->
identity) and the identity references this node holds (labels -> id).
`reconcile()` reads what etcd has under this node's name (realized), plans
the difference (`plan()`, pure) and applies it, adds before deletes, each
key in its own transaction guarded by the mod_revision it was read at, so
a racing writer makes the write fail (and the next pass re-plans) instead
of being overwritten. A key is written again when its value differs or it
is not under the current lease (so a new lease re-publishes everything).

Deletes: a key this node owns but no longer wants is deleted if it was
removed in this run (a tombstone: remove_endpoint, release_identity) or,
for keys a previous run left under an adopted lease, once `restore_grace`
has passed since start: the restarted agent gets that long to re-declare
its endpoints and identities before the leftovers go.

Conflicts are reported, not fought: an IP key published by another node is
left alone (status() lists it), and an identity whose labels were given
another id while this node was away is dropped from the desired refs (the
agent gets the new id from its next allocate_identity()).

Triggers: desired changes (direct per-key sync), a new lease, etcd
answering again after a failure, the watch seeing one of our keys deleted
or taken, a relist, and a periodic resync. I/O (etcd).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from aetcd import transactions as tx

from kvstore import identities, layout
from kvstore.errors import KvstoreError, KvstoreUnavailable
from kvstore.etcd import Etcd, LeaseNotFound
from kvstore.model import NodeInfo
from kvstore.session import Session
from kvstore.timing import Backoff, wait_event

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Realized:
    """A key in etcd as read: value, lease, mod_revision, and whether this node owns it."""

    value: bytes
    lease: int
    mod_revision: int
    mine: bool


@dataclass(frozen=True)
class Put:
    key: bytes
    value: bytes
    expect_mod: int  # 0: the key must be absent


@dataclass(frozen=True)
class Ref:
    identity: int
    labels: frozenset[str]


@dataclass(frozen=True)
class Delete:
    key: bytes
    expect_mod: int


@dataclass(frozen=True)
class Conflict:
    key: bytes
    reason: str


Op = Put | Ref | Delete | Conflict


def plan(
    desired: Mapping[bytes, bytes],
    refs: Mapping[bytes, Ref],
    realized: Mapping[bytes, Realized],
    lease_id: int,
    may_delete: Callable[[bytes], bool],
    keys: Iterable[bytes] | None = None,
) -> list[Op]:
    """Operations that make `realized` match `desired` (plain keys) and
    `refs` (ref keys) under `lease_id`; only `keys` if given. Adds first,
    deletes last."""
    scope = set(keys) if keys is not None else set(desired) | set(refs) | set(realized)
    adds: list[Op] = []
    deletes: list[Op] = []
    for key in sorted(scope):
        have = realized.get(key)
        if key in desired:
            want = desired[key]
            if have is None:
                adds.append(Put(key, want, 0))
            elif not have.mine:
                adds.append(Conflict(key, "published by another node; not overwritten"))
            elif have.value != want or have.lease != lease_id:
                adds.append(Put(key, want, have.mod_revision))
        elif key in refs:
            if have is None or have.lease != lease_id:
                adds.append(refs[key])
        elif have is not None and have.mine and may_delete(key):
            deletes.append(Delete(key, have.mod_revision))
    return adds + deletes


class Publisher:
    def __init__(self, etcd: Etcd, session: Session, node: NodeInfo, restore_grace: float, resync_interval: float) -> None:
        self.etcd = etcd
        self.session = session
        self.node = node
        self.restore_grace = restore_grace
        self.resync_interval = resync_interval
        self.endpoints: dict[IPv4Address | IPv6Address, int] = {}
        self.named_ports: dict[IPv4Address | IPv6Address, tuple[tuple[str, int, int], ...]] = {}
        self.refs: dict[frozenset[str], int] = {}
        self.tombstones: set[bytes] = set()
        self.conflicts: dict[str, str] = {}
        self.last_error: str | None = None
        self._started = time.monotonic()
        self._sweep: asyncio.TimerHandle | None = None
        self._dirty = asyncio.Event()

    # -- desired state -------------------------------------------------------

    def start_clock(self) -> None:
        """Start counting restore_grace; reconcile once when it ends."""
        self._started = time.monotonic()
        self._sweep = asyncio.get_running_loop().call_later(self.restore_grace, self.mark_dirty)

    def stop_clock(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None

    def mark_dirty(self) -> None:
        self._dirty.set()

    def set_endpoint(self, ip: IPv4Address | IPv6Address, identity: int, named_ports: tuple[tuple[str, int, int], ...] = ()) -> bytes:
        self.endpoints[ip] = identity
        self.named_ports[ip] = tuple(named_ports)
        key = layout.ip_key(ip)
        self.tombstones.discard(key)
        return key

    def remove_endpoint(self, ip: IPv4Address | IPv6Address) -> bytes:
        self.endpoints.pop(ip, None)
        self.named_ports.pop(ip, None)
        key = layout.ip_key(ip)
        self.tombstones.add(key)
        return key

    def hold(self, labels: frozenset[str], identity: int) -> None:
        old = self.refs.get(labels)
        self.refs[labels] = identity
        self.tombstones.discard(layout.ref_key(identity, self.node.name))
        if old is not None and old != identity:
            self.tombstones.add(layout.ref_key(old, self.node.name))

    def release(self, labels: frozenset[str]) -> bytes | None:
        identity = self.refs.pop(labels, None)
        if identity is None:
            return None
        key = layout.ref_key(identity, self.node.name)
        self.tombstones.add(key)
        return key

    def _desired(self) -> tuple[dict[bytes, bytes], dict[bytes, Ref]]:
        me = self.node.name
        desired = {layout.node_key(me): layout.node_value(self.node)}
        for ip, identity in self.endpoints.items():
            desired[layout.ip_key(ip)] = layout.ip_value(identity, me, self.named_ports.get(ip, ()))
        refs = {layout.ref_key(n, me): Ref(n, labels) for labels, n in self.refs.items()}
        return desired, refs

    def wants(self, key: bytes) -> bool:
        """Is `key` one this node publishes (so losing it needs a reconcile)?"""
        k = layout.parse_key(key)
        if k is None:
            return False
        if k.kind == "node":
            return k.node == self.node.name
        if k.kind == "ip":
            return k.ip in self.endpoints
        if k.kind == "ref":
            return k.node == self.node.name and k.identity in self.refs.values()
        return False

    def _may_delete(self, key: bytes) -> bool:
        return key in self.tombstones or time.monotonic() - self._started >= self.restore_grace

    # -- realized state ------------------------------------------------------

    def _realized(self, kv) -> Realized | None:
        k = layout.parse_key(kv.key)
        if k is None:
            return None
        me = self.node.name
        if k.kind == "ip":
            ep = layout.parse_ip_value(k.ip, kv.value)
            mine = ep is not None and ep.node == me
        elif k.kind in ("node", "ref"):
            mine = k.node == me
        else:
            return None
        return Realized(kv.value, kv.lease, kv.mod_revision, mine)

    async def _read_all(self) -> dict[bytes, Realized]:
        out: dict[bytes, Realized] = {}
        ips = await self.etcd.call("listing endpoints", lambda c: c.get_prefix(layout.prefix(layout.IPS)))
        refs = await self.etcd.call(
            "listing identity references", lambda c: c.get_prefix(layout.prefix(layout.REFS), keys_only=True)
        )
        node_key = layout.node_key(self.node.name)
        node = await self.etcd.call("reading the node record", lambda c: c.get(node_key))
        for kv in [*ips, *refs, *([node] if node is not None else [])]:
            r = self._realized(kv)
            if r is not None and (r.mine or kv.key.startswith(layout.prefix(layout.IPS))):
                out[kv.key] = r
        return out

    async def _read(self, keys: Iterable[bytes]) -> dict[bytes, Realized]:
        out: dict[bytes, Realized] = {}
        for key in keys:
            kv = await self.etcd.call("reading a key", lambda c, key=key: c.get(key))
            r = self._realized(kv) if kv is not None else None
            if r is not None:
                out[key] = r
        return out

    # -- reconcile -----------------------------------------------------------

    async def reconcile(self, lease_id: int, keys: Iterable[bytes] | None = None) -> None:
        """One pass, over every key this node owns or only `keys`."""
        keys = list(keys) if keys is not None else None
        realized = await (self._read(keys) if keys is not None else self._read_all())
        desired, refs = self._desired()
        for op in plan(desired, refs, realized, lease_id, self._may_delete, keys):
            await self._apply(op, lease_id)

    async def _apply(self, op: Op, lease_id: int) -> None:
        if isinstance(op, Conflict):
            if self.conflicts.get(op.key.decode()) != op.reason:
                log.warning("kvstore: %s: %s", op.key.decode(), op.reason)
            self.conflicts[op.key.decode()] = op.reason
            return
        if isinstance(op, Ref):
            key = layout.ref_key(op.identity, self.node.name)
            if await identities.hold(self.etcd, op.identity, op.labels, self.node.name, lease_id):
                self.conflicts.pop(key.decode(), None)
                return
            reason = f"identity {op.identity} for {sorted(op.labels)} was collected and its labels given another id"
            log.warning("kvstore: %s; dropping it, allocate again", reason)
            self.conflicts[key.decode()] = reason
            if self.refs.get(op.labels) == op.identity:
                del self.refs[op.labels]
            return
        if isinstance(op, Put):
            ok, _ = await self.etcd.call(
                "publishing a key",
                lambda c: c.transaction(
                    compare=[tx.Mod(op.key) == op.expect_mod],
                    success=[tx.Put(op.key, op.value, lease=lease_id)],
                    failure=[],
                ),
            )
            if ok:
                self.conflicts.pop(op.key.decode(), None)
        else:
            ok, _ = await self.etcd.call(
                "deleting a key",
                lambda c: c.transaction(compare=[tx.Mod(op.key) == op.expect_mod], success=[tx.Delete(op.key)], failure=[]),
            )
            if ok:
                self.tombstones.discard(op.key)
        if not ok:
            self.mark_dirty()  # somebody wrote it meanwhile: re-plan from a fresh read

    async def sync(self, keys: Iterable[bytes]) -> None:
        """Write `keys` now if etcd is reachable and we hold a lease; else
        leave them to the next reconcile. Never raises for etcd trouble."""
        lease_id = self.session.lease_id
        if lease_id is None or not self.etcd.reachable:
            self.mark_dirty()
            return
        try:
            await self.reconcile(lease_id, keys)
        except LeaseNotFound:
            self.session.lease_lost(lease_id)
        except KvstoreError as e:
            self.last_error = str(e)
            self.mark_dirty()

    async def run(self) -> None:
        backoff = Backoff(cap=1.0)
        while True:
            await wait_event(self._dirty, self.resync_interval)
            self._dirty.clear()
            lease_id = self.session.lease_id
            if lease_id is None:
                continue  # the session calls back when it has one
            try:
                await self.reconcile(lease_id)
                backoff.reset()
            except LeaseNotFound:
                self.session.lease_lost(lease_id)
            except KvstoreUnavailable as e:
                self.last_error = str(e)
                await asyncio.sleep(backoff.next())
                self.mark_dirty()
            except KvstoreError as e:
                self.last_error = str(e)
                log.warning("kvstore: publishing: %s", e)
                await asyncio.sleep(backoff.next())
                self.mark_dirty()
