"""This node's etcd lease: obtained (adopted from the lease file, or granted),
kept alive every TTL/3, replaced when etcd says it is gone. Every key this
node owns (node record, endpoints, identity refs) lives under it, so a dead
node's keys vanish one TTL after its last keepalive.

The lease id is persisted in `<state_dir>/kvstore-lease.json` (mode 0600,
written atomically). A restarted agent adopts the lease if etcd still
knows it (remaining TTL > 0) and it was this node's: its keys and identity
references stay in place, nothing churns. Otherwise a new lease is granted
and `on_new_lease` tells the publisher to re-publish everything.

etcd itself restores leases when it restarts (with a full TTL), so etcd
being down does not expire them; a lease expires when this node cannot
reach an etcd that is up, or is revoked. I/O (etcd, the lease file).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from kvstore.errors import KvstoreUnavailable
from kvstore.etcd import Etcd
from kvstore.timing import Backoff, wait_event

log = logging.getLogger(__name__)

LEASE_FILE = "kvstore-lease.json"


class Session:
    def __init__(
        self,
        etcd: Etcd,
        node: str,
        state_dir: Path,
        ttl: float,
        on_new_lease: Callable[[int, bool], None],
    ) -> None:
        self.etcd = etcd
        self.node = node
        self.path = state_dir / LEASE_FILE
        self.ttl = max(1, math.ceil(ttl))
        self.granted_ttl: int | None = None
        self.lease_id: int | None = None
        self.adopted = False
        self._on_new_lease = on_new_lease
        self._ready = asyncio.Event()
        self._wake = asyncio.Event()

    # -- for the other parts of the Cluster ---------------------------------

    async def wait_lease(self, timeout: float) -> int:
        """The current lease id; waits up to `timeout` for one."""
        if self.lease_id is None:
            await wait_event(self._ready, timeout)
        if self.lease_id is None:
            why = self.etcd.last_error or "not connected yet"
            raise KvstoreUnavailable(f"no etcd lease for node {self.node} yet ({why})")
        return self.lease_id

    def lease_lost(self, lease_id: int) -> None:
        """A write said `lease_id` is gone: get a new one now."""
        if self.lease_id == lease_id:
            log.warning("kvstore: lease %x is gone; getting a new one", lease_id)
            self._drop()
            self._wake.set()

    async def revoke(self) -> None:
        """Forget the lease file (a later start must not adopt), then revoke."""
        lease_id = self.lease_id
        self._drop()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if lease_id is not None:
            await self.etcd.call("revoking the lease", lambda c: c.revoke_lease(lease_id))

    # -- the task ------------------------------------------------------------

    async def run(self) -> None:
        """Obtain a lease, then keep it alive every TTL/3; after a failure
        retry within a second, not a TTL/3 later."""
        backoff = Backoff(cap=min(1.0, self.ttl / 3))
        while True:
            try:
                if self.lease_id is None:
                    await self._obtain()
                else:
                    await self._keepalive(self.lease_id)
                backoff.reset()
                if self.lease_id is not None:
                    await self._sleep(self.granted_ttl / 3)
            except KvstoreUnavailable as e:
                log.debug("kvstore: %s", e)
                await self._sleep(backoff.next())

    def wake(self) -> None:
        """Check the lease now (etcd answers again)."""
        self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        await wait_event(self._wake, seconds)
        self._wake.clear()

    async def _keepalive(self, lease_id: int) -> None:
        reply = await self.etcd.call("keeping the lease alive", lambda c: c.refresh_lease(lease_id))
        if reply is None or reply.TTL <= 0:
            self.lease_lost(lease_id)

    async def _obtain(self) -> None:
        adopted = await self._adopt()
        if adopted is not None:
            lease_id, ttl = adopted
        else:
            lease = await self.etcd.call("granting a lease", lambda c: c.lease(self.ttl))
            lease_id, ttl = lease.id, lease.ttl
            log.info("kvstore: granted lease %x (ttl %d s)", lease_id, ttl)
        self._write_file(lease_id)
        self.lease_id, self.granted_ttl, self.adopted = lease_id, ttl, adopted is not None
        self._ready.set()
        self._on_new_lease(lease_id, self.adopted)

    async def _adopt(self) -> tuple[int, int] | None:
        lease_id = self._read_file()
        if lease_id is None:
            return None
        info = await self.etcd.call("looking up the saved lease", lambda c: c.get_lease_info(lease_id, keys=False))
        if info.TTL <= 0:
            log.info("kvstore: saved lease %x has expired", lease_id)
            return None
        reply = await self.etcd.call("keeping the lease alive", lambda c: c.refresh_lease(lease_id))
        if reply is None or reply.TTL <= 0:
            return None
        log.info("kvstore: adopted saved lease %x (ttl %d s)", lease_id, info.grantedTTL)
        return lease_id, info.grantedTTL or self.ttl

    def _drop(self) -> None:
        self.lease_id = None
        self.adopted = False
        self._ready.clear()

    # -- the lease file ------------------------------------------------------

    def _read_file(self) -> int | None:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("kvstore: ignoring unreadable %s: %s", self.path, e)
            return None
        if not isinstance(doc, dict) or doc.get("node") != self.node or not isinstance(doc.get("lease_id"), int):
            log.warning("kvstore: ignoring %s: not a lease of node %s", self.path, self.node)
            return None
        return doc["lease_id"]

    def _write_file(self, lease_id: int) -> None:
        """Atomically, mode 0600; a failure is logged (the lease still works,
        only a restart will not adopt it)."""
        doc = {"node": self.node, "lease_id": lease_id, "endpoints": list(self.etcd.config.endpoints)}
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".kvstore-lease-", dir=self.path.parent)  # mkstemp: mode 0600
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(doc, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as e:
            log.error("kvstore: cannot save the lease id to %s: %s", self.path, e)
