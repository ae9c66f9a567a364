"""The event loop of one ADS stream, shared by the SotW and delta protocols.

A stream handles two kinds of events strictly in order, one at a time:
requests from Envoy and "the node's snapshot changed" from the cache. One
consumer means the protocol state needs no locks and responses go out in
the order they were decided (clusters, listeners, routes). No network I/O of
its own: requests arrive as an async iterator and responses leave through
the `send` coroutine the server (or a test's fake stream) provides.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any, AsyncIterator, Awaitable, Callable

from .cache import SnapshotCache
from .resources import CLUSTER, LISTENER, ROUTE, Resource
from .snapshot import EMPTY, Snapshot

log = logging.getLogger(__name__)

Send = Callable[[bytes], Awaitable[None]]
_EOF = object()
_CHANGED = object()


class Session:
    """Base: subclasses implement on_request / on_snapshot / in_sync."""

    protocol = "?"

    def __init__(self, cache: SnapshotCache, send: Send) -> None:
        self.cache = cache
        self.send = send
        self.node_id: str | None = None
        self._nonces = itertools.count(1)
        self._changed_pending = False

    def next_nonce(self) -> str:
        return str(next(self._nonces))

    @staticmethod
    def is_nack(req: Any) -> bool:
        """SotW and delta requests say NACK the same way: an error_detail
        with a code or a message."""
        return req.error_detail is not None and bool(req.error_detail.code or req.error_detail.message)

    @property
    def snapshot(self) -> Snapshot:
        if self.node_id is None:
            return EMPTY
        return self.cache.get_snapshot(self.node_id) or EMPTY

    async def run(self, requests: AsyncIterator[Any]) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def pump() -> None:
            try:
                async for req in requests:
                    queue.put_nowait(req)
            except Exception as exc:  # stream reset by the peer
                log.debug("%s stream of %s ended: %r", self.protocol, self.node_id, exc)
            finally:
                queue.put_nowait(_EOF)

        def changed() -> None:
            if not self._changed_pending:
                self._changed_pending = True
                queue.put_nowait(_CHANGED)

        reader = asyncio.create_task(pump())
        unwatch: Callable[[], None] | None = None
        try:
            while True:
                item = await queue.get()
                if item is _EOF:
                    break
                if item is _CHANGED:
                    self._changed_pending = False
                    await self.on_snapshot()
                else:
                    if self.node_id is None:
                        node = getattr(item, "node", None)
                        if node is None or not node.id:
                            log.warning("%s stream: first request has no node id; ignored", self.protocol)
                            continue
                        self.node_id = node.id
                        unwatch = self.cache.watch(self.node_id, changed)
                    await self.on_request(item)
                self._report()
        finally:
            if unwatch:
                unwatch()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    def _report(self) -> None:
        snap = self.cache.get_snapshot(self.node_id) if self.node_id else None
        if snap is not None and self.in_sync(snap):
            self.cache.report_ack(self.node_id, snap.version)

    async def on_request(self, req: Any) -> None:
        raise NotImplementedError

    async def on_snapshot(self) -> None:
        raise NotImplementedError

    def in_sync(self, snap: Snapshot) -> bool:
        raise NotImplementedError


def required_names(snap: Snapshot, type_url: str) -> frozenset[str]:
    """Names Envoy must hold for `snap` to be in force: every cluster and
    listener, and the route configurations the listeners name."""
    if type_url == ROUTE:
        return frozenset(n for r in snap.of(LISTENER).values() for t, n in r.refs if t == ROUTE)
    return snap.names(type_url)


def held_clusters(
    snap: Snapshot, acked: dict[str, dict[str, Resource]]
) -> dict[str, Resource]:
    """Make-before-break for removals: a cluster that the new snapshot drops is
    kept while a listener or route configuration Envoy still runs (acked)
    refers to it. Once Envoy acknowledges the new listeners/routes the hold
    lifts and the cluster goes out in the next CDS response."""
    gone = {n: r for n, r in acked.get(CLUSTER, {}).items() if n not in snap.of(CLUSTER)}
    if not gone:
        return {}
    in_use = {n for t in (LISTENER, ROUTE) for r in acked.get(t, {}).values() for (rt, n) in r.refs if rt == CLUSTER}
    return {n: r for n, r in gone.items() if n in in_use}
