"""Keep the mirror in step with etcd: list `ciliate/state/` once, then
watch it from the list's revision + 1, one watch on the common prefix (one
revision to track). I/O (etcd).

- The stream fails (etcd down, connection lost): retry with backoff and
  resume from the last revision seen + 1; the mirror (and so the view) is
  kept meanwhile, never cleared because etcd is unreachable.
- etcd says the revision was compacted: relist (get_prefix, then watch from
  the list's revision + 1); the mirror is replaced by the fresh list.
- Before resuming, one cheap read checks the cluster id and revision: a
  wiped or different etcd (revision went backwards, other cluster id) is
  relisted too, otherwise the watch would wait for revisions that the new
  cluster reaches much later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aetcd

from kvstore import layout
from kvstore.errors import KvstoreUnavailable
from kvstore.etcd import Etcd, WatchCompacted
from kvstore.mirror import Change, Mirror
from kvstore.timing import Backoff

log = logging.getLogger(__name__)



class Watching:
    def __init__(self, etcd: Etcd, mirror: Mirror, on_change: Callable[[Change], None]) -> None:
        self.etcd = etcd
        self.mirror = mirror
        self.on_change = on_change
        self.cluster_id: int | None = None
        self.relists = 0

    async def run(self) -> None:
        prefix = layout.prefix(layout.PREFIX)
        backoff = Backoff(cap=1.0)
        need_list = True
        while True:
            try:
                if need_list or await self._moved(prefix):
                    await self._list(prefix)
                    need_list = False
                backoff.reset()
                await self.etcd.watch(prefix, self.mirror.revision + 1, self._event)
            except WatchCompacted as e:
                log.info("kvstore: %s; relisting", e)
                need_list = True
            except KvstoreUnavailable as e:
                log.debug("kvstore: watch: %s", e)
                await asyncio.sleep(backoff.next())

    async def _list(self, prefix: bytes) -> None:
        rng = await self.etcd.call("listing the cluster state", lambda c: c.get_prefix(prefix))
        self.cluster_id = rng.header.cluster_id
        self.relists += 1
        self.on_change(self.mirror.reset(((kv.key, kv.value) for kv in rng.kvs), rng.header.revision))

    async def _moved(self, prefix: bytes) -> bool:
        """Is etcd no longer the history our revision belongs to?"""
        rng = await self.etcd.call("reading the revision", lambda c: c.get_range(prefix, prefix + b"\0"))
        h = rng.header
        if h.cluster_id != self.cluster_id or h.revision < self.mirror.revision:
            log.warning(
                "kvstore: etcd cluster %x at revision %d, we saw cluster %x at %d; relisting",
                h.cluster_id, h.revision, self.cluster_id or 0, self.mirror.revision,
            )
            return True
        return False

    def _event(self, event: aetcd.Event) -> None:
        kv = event.kv
        self.on_change(self.mirror.apply(event.kind == "DELETE", kv.key, kv.value, kv.mod_revision))
