"""`Cluster`: one node's membership in the cluster state kept in etcd. The
one place that spawns, supervises and stops the kvstore tasks:

  lease    kvstore/session.py     obtain/adopt the lease, keep it alive
  watch    kvstore/watching.py    list + watch ciliate/state/ into the mirror
  publish  kvstore/publishing.py  make etcd hold this node's desired keys
  gc       kvstore/identities.py  delete identities nobody references

The agent talks to it through the methods below; everything else is
internal. I/O (etcd, the lease file under state_dir).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

from kvstore import identities, layout
from kvstore.config import EtcdConfig
from kvstore.errors import KvstoreError, KvstoreUnavailable
from kvstore.etcd import Etcd, LeaseNotFound
from kvstore.gc import GcTracker
from kvstore.mirror import Change, Mirror
from kvstore.model import ClusterView, NodeInfo
from kvstore.publishing import Publisher
from kvstore.session import Session
from kvstore.watching import Watching

log = logging.getLogger(__name__)

DEFAULT_LEASE_TTL = 900.0
DEFAULT_OP_TIMEOUT = 2.0
DEFAULT_RESTORE_GRACE = 120.0


def default_gc_grace(lease_ttl: float) -> float:
    """2 x lease TTL, at least 60 s: a node cut off from etcd loses its refs
    one TTL after its last keepalive; the grace lets it come back and
    re-reference its ids (same numbers) for up to another 2 TTLs before
    they can be collected, and covers an agent restart."""
    return max(2 * lease_ttl, 60.0)


def default_gc_interval(gc_grace: float) -> float:
    """A quarter of the grace (so an id goes at most ~1.25 x grace after its
    last ref), between 1 s and 5 min (every node lists the identities)."""
    return min(max(gc_grace / 4, 1.0), 300.0)


class Cluster:
    """Share identities, endpoints and node records with the other nodes.

    lease_ttl      etcd lease TTL in seconds (rounded up to whole seconds);
                   keepalive every TTL/3
    gc_grace       how long an identity must stay unreferenced before any
                   node deletes it (default_gc_grace)
    gc_interval    how often this node runs a GC pass (default_gc_interval)
    op_timeout     deadline of each etcd call; allocate_identity raises
                   KvstoreUnavailable about this fast when etcd is away
    restore_grace  after start, how long keys a previous run left under an
                   adopted lease may stay without being re-declared
                   (endpoints, identity refs) before they are deleted
    """

    def __init__(
        self,
        config: EtcdConfig,
        node: NodeInfo,
        state_dir: Path,
        on_view: Callable[[ClusterView], None],
        *,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        gc_grace: float | None = None,
        gc_interval: float | None = None,
        op_timeout: float = DEFAULT_OP_TIMEOUT,
        restore_grace: float = DEFAULT_RESTORE_GRACE,
    ) -> None:
        for name, value in (("lease_ttl", lease_ttl), ("op_timeout", op_timeout), ("gc_interval", gc_interval)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        for name, value in (("gc_grace", gc_grace), ("restore_grace", restore_grace)):
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        self.config = config
        self.node = node
        self.gc_grace = default_gc_grace(lease_ttl) if gc_grace is None else gc_grace
        self.gc_interval = default_gc_interval(self.gc_grace) if gc_interval is None else gc_interval
        self.op_timeout = op_timeout
        self._on_view = on_view
        self._etcd = Etcd(config, op_timeout)
        self._mirror = Mirror(node.name)
        self._session = Session(self._etcd, node.name, Path(state_dir), lease_ttl, self._on_new_lease)
        self._publisher = Publisher(self._etcd, self._session, node, restore_grace, resync_interval=self.gc_interval)
        self._watching = Watching(self._etcd, self._mirror, self._on_change)
        self._gc = GcTracker(self.gc_grace)
        self._rng = random.Random()
        self._tasks: list[asyncio.Task] = []
        self._stopped = False
        self._view_pending: asyncio.Handle | None = None
        self._etcd.on_reachable(self._publisher.mark_dirty)
        self._etcd.on_reachable(self._session.wake)

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Start the background tasks; returns at once, etcd up or not."""
        if self._tasks:
            raise RuntimeError("Cluster already started")
        self._stopped = False
        self._publisher.start_clock()
        loops: dict[str, Callable[[], Awaitable[None]]] = {
            "lease": self._session.run,
            "watch": self._watching.run,
            "publish": self._publisher.run,
            "gc": self._gc_loop,
        }
        self._tasks = [asyncio.create_task(self._supervise(n, f), name=f"kvstore-{n}") for n, f in loops.items()]

    async def stop(self, *, revoke: bool = False) -> None:
        """Stop the tasks. The lease is left to live out its TTL (a restart
        adopts it and keeps every key) unless `revoke`, which deletes this
        node's keys at once (best effort) and forgets the lease file."""
        self._stopped = True
        tasks, self._tasks = self._tasks, []
        while tasks:
            for t in tasks:
                t.cancel()
            await asyncio.wait(tasks, timeout=1.0)
            tasks = [t for t in tasks if not t.done()]
        self._publisher.stop_clock()
        if self._view_pending is not None:
            self._view_pending.cancel()
            self._view_pending = None
        if revoke:
            try:
                await self._session.revoke()
            except Exception as e:  # noqa: BLE001 - best effort, the TTL cleans up anyway
                log.warning("kvstore: could not revoke the lease: %s", e)
        await self._etcd.close()

    async def _supervise(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run one loop; a bug in it is logged and the loop restarted."""
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("kvstore: %s task failed; restarting it", name)
                await asyncio.sleep(1.0)

    # -- state for the agent --------------------------------------------------

    @property
    def connected(self) -> bool:
        """etcd answered the last call and this node holds a lease."""
        return self._etcd.reachable and self._session.lease_id is not None

    @property
    def view(self) -> ClusterView:
        """The last known remote view (kept while etcd is unreachable)."""
        return self._mirror.view()

    def changed_since(self, serial: int, upto: int) -> frozenset | None:
        """Mirror.changed_since: the addresses that may differ between two
        views this cluster handed out (None: compare everything)."""
        return self._mirror.changed_since(serial, upto)

    def status(self) -> dict:
        """JSON-able state for `ciliate status`. The lease id is a hex
        string (etcdctl's spelling; 63-bit ids do not survive JSON numbers
        in every reader)."""
        view = self._mirror.view()
        lease_id = self._session.lease_id
        return {
            "endpoints": list(self.config.endpoints),
            "endpoint": self._etcd.endpoint,
            "connected": self.connected,
            "node": self.node.name,
            "lease_id": f"{lease_id:x}" if lease_id is not None else None,
            "lease_ttl": self._session.granted_ttl,
            "lease_adopted": self._session.adopted,
            "last_error": self._publisher.last_error if self._etcd.last_error is None else self._etcd.last_error,
            "revision": view.revision,
            "relists": self._watching.relists,
            "remote_nodes": len(view.nodes),
            "remote_endpoints": len(view.endpoints),
            "identities": len(view.identities),
            "local_endpoints": len(self._publisher.endpoints),
            "identity_refs": len(self._publisher.refs),
            "pending_deletes": len(self._publisher.tombstones),
            "conflicts": dict(self._publisher.conflicts),
            "gc": {"grace": self.gc_grace, "interval": self.gc_interval, "candidates": len(self._gc.candidates)},
        }

    # -- identities ------------------------------------------------------------

    async def allocate_identity(self, labels: frozenset[str]) -> int:
        """The cluster-wide id of `labels`, referenced by this node. An id
        this node already holds is returned without asking etcd. Raises
        KvstoreUnavailable (about op_timeout at most) when etcd cannot be
        reached or no lease could be had."""
        labels = layout.check_labels(labels)
        held = self._publisher.refs.get(labels)
        if held is not None:
            return held
        for _ in range(2):
            lease_id = await self._session.wait_lease(self.op_timeout)
            try:
                n = await identities.allocate(
                    self._etcd, labels, self.node.name, lease_id, self._mirror.identity_ids(), self._rng
                )
            except LeaseNotFound:
                self._session.lease_lost(lease_id)
                continue
            self._publisher.hold(labels, n)
            return n
        raise KvstoreUnavailable(f"etcd {self._etcd.endpoint}: this node's lease keeps disappearing")

    async def release_identity(self, labels: frozenset[str]) -> None:
        """Drop this node's reference to `labels`' id (now if etcd answers,
        else once it does). The id itself goes when no node references it
        for gc_grace."""
        key = self._publisher.release(layout.check_labels(labels))
        if key is not None:
            await self._publisher.sync([key])

    # -- the node record -------------------------------------------------------

    async def set_node_labels(self, labels: Mapping[str, str] | None) -> None:
        """Publish new labels in this node's record (desired state: written
        now if etcd answers, else when it does again; never raises for etcd
        trouble). Its name and addresses do not change while it runs."""
        labels = dict(labels) if labels else None
        if labels == self.node.labels:
            return
        self.node = replace(self.node, labels=labels)  # validated again: a bad label raises here
        self._publisher.node = self.node
        await self._publisher.sync([layout.node_key(self.node.name)])

    # -- endpoints -----------------------------------------------------------

    async def set_endpoint(
        self, ip: IPv4Address | IPv6Address, identity: int, named_ports: tuple[tuple[str, int, int], ...] = (),
    ) -> None:
        """Publish a local endpoint's address, either family (desired state:
        written now if etcd answers, else when it does again; never raises
        for etcd trouble)."""
        ip = ip_address(ip)
        if not isinstance(identity, int) or not 0 < identity <= 0xFFFFFFFF:
            raise ValueError(f"identity must be a positive 32-bit integer, got {identity!r}")
        named_ports = tuple(sorted(named_ports))
        if self._publisher.endpoints.get(ip) == identity and self._publisher.named_ports.get(ip, ()) == named_ports:
            return
        await self._publisher.sync([self._publisher.set_endpoint(ip, identity, named_ports)])

    async def remove_endpoint(self, ip: IPv4Address | IPv6Address) -> None:
        ip = ip_address(ip)
        await self._publisher.sync([self._publisher.remove_endpoint(ip)])

    # -- internals -------------------------------------------------------------

    def _on_new_lease(self, lease_id: int, adopted: bool) -> None:
        self._publisher.mark_dirty()

    def _on_change(self, change: Change) -> None:
        if self._stopped:
            return
        if (
            change.relisted  # a delete of ours may have gone unseen
            or (change.lost is not None and self._publisher.wants(change.lost))
            or (change.freed is not None and change.freed.decode() in self._publisher.conflicts)
        ):
            self._publisher.mark_dirty()
        if change.view and self._view_pending is None:
            self._view_pending = asyncio.get_running_loop().call_soon(self._emit_view)

    def _emit_view(self) -> None:
        self._view_pending = None
        try:
            self._on_view(self._mirror.view())
        except Exception:
            log.exception("kvstore: on_view callback failed")

    async def _gc_loop(self) -> None:
        while True:
            await asyncio.sleep(self.gc_interval * self._rng.uniform(0.9, 1.1))
            try:
                await identities.collect_garbage(self._etcd, self._gc, time.monotonic())
            except KvstoreUnavailable as e:
                log.debug("kvstore: gc: %s", e)
            except KvstoreError as e:
                log.warning("kvstore: gc: %s", e)
