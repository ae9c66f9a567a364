"""Snapshots per Envoy node id and what each Envoy acknowledged. No network I/O.

The cache knows nothing of gRPC: streams (sotw.py, delta.py) read snapshots
from it, get a callback when a node's snapshot changes, and report back when
their Envoy is fully in sync with a version (ACK) or rejected one (NACK).
`wait_for_ack` is the completion the agent waits on before it points the
kernel redirect at a proxy port (as Cilium does: redirect only after ACK).
`counters` counts, per type URL and over every stream, the responses sent
and the ACKs and NACKs that came back (the agent's xDS metrics).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from .errors import AckTimeout, NackError
from .snapshot import Snapshot

log = logging.getLogger(__name__)

_MAX_VERSIONS = 1024


@dataclass
class _Node:
    snapshot: Snapshot | None = None
    seq: int = 0  # bumps on every set_snapshot
    seq_of: dict[str, int] = field(default_factory=dict)  # version -> seq it was set at
    acked_version: str | None = None
    acked_seq: int = 0
    nack: NackError | None = None
    nack_seq: int = 0
    watchers: set[Callable[[], None]] = field(default_factory=set)
    waiters: set[asyncio.Future] = field(default_factory=set)


@dataclass
class XdsCounters:
    """Totals since start, by type URL; only ever incremented."""

    pushes: Counter[str] = field(default_factory=Counter)  # responses sent
    acks: Counter[str] = field(default_factory=Counter)
    nacks: Counter[str] = field(default_factory=Counter)


class SnapshotCache:
    def __init__(self) -> None:
        self._nodes: dict[str, _Node] = {}
        self.counters = XdsCounters()

    def _node(self, node_id: str) -> _Node:
        n = self._nodes.get(node_id)
        if n is None:
            n = self._nodes[node_id] = _Node()
        return n

    # -- for the agent

    def set_snapshot(self, node_id: str, snapshot: Snapshot) -> None:
        n = self._node(node_id)
        if n.snapshot is not None and n.snapshot.version == snapshot.version:
            return
        n.seq += 1
        n.snapshot = snapshot
        n.seq_of[snapshot.version] = n.seq
        if len(n.seq_of) > _MAX_VERSIONS:  # forget the oldest versions; waiters on them time out
            for v in list(n.seq_of)[: len(n.seq_of) - _MAX_VERSIONS]:
                del n.seq_of[v]
        for cb in list(n.watchers):
            cb()

    def get_snapshot(self, node_id: str) -> Snapshot | None:
        n = self._nodes.get(node_id)
        return n.snapshot if n else None

    def acked_version(self, node_id: str) -> str | None:
        n = self._nodes.get(node_id)
        return n.acked_version if n else None

    def last_error(self, node_id: str) -> str | None:
        """Envoy's error_detail for the newest rejected version, until a newer
        version is acknowledged."""
        n = self._nodes.get(node_id)
        return n.nack.detail if n and n.nack else None

    def last_nack(self, node_id: str) -> NackError | None:
        n = self._nodes.get(node_id)
        return n.nack if n else None

    async def wait_for_ack(self, node_id: str, version: str, timeout: float) -> None:
        """Return once the node's Envoy has acknowledged `version` (or a later
        one); raise NackError if it rejected it (or a later one), AckTimeout
        if neither happens in `timeout` seconds."""
        n = self._node(node_id)
        target = n.seq_of.get(version)
        if target is None:
            raise KeyError(f"version {version!r} was never set for node {node_id!r}")
        while True:
            if n.nack is not None and n.nack_seq >= target and n.nack_seq > n.acked_seq:
                raise n.nack
            if n.acked_seq >= target:
                return
            fut = asyncio.get_running_loop().create_future()
            n.waiters.add(fut)
            try:
                await asyncio.wait_for(asyncio.shield(fut), timeout)
            except asyncio.TimeoutError:
                raise AckTimeout(f"node {node_id!r} did not acknowledge version {version!r} in {timeout}s") from None
            finally:
                n.waiters.discard(fut)

    # -- for the streams

    def count_push(self, type_url: str) -> None:
        self.counters.pushes[type_url] += 1

    def count_ack(self, type_url: str) -> None:
        self.counters.acks[type_url] += 1

    def watch(self, node_id: str, on_change: Callable[[], None]) -> Callable[[], None]:
        n = self._node(node_id)
        n.watchers.add(on_change)
        return lambda: n.watchers.discard(on_change)

    def report_ack(self, node_id: str, version: str) -> None:
        n = self._node(node_id)
        seq = n.seq_of.get(version, 0)
        if seq <= n.acked_seq:
            return
        n.acked_seq, n.acked_version = seq, version
        if n.nack is not None and n.nack_seq <= seq:
            n.nack = None
        self._wake(n)

    def report_nack(self, node_id: str, error: NackError) -> None:
        n = self._node(node_id)
        seq = n.seq_of.get(error.version, n.seq)
        self.counters.nacks[error.type_url] += 1
        log.warning("node %s: %s", node_id, error)
        n.nack, n.nack_seq = error, seq
        self._wake(n)

    @staticmethod
    def _wake(n: _Node) -> None:
        for fut in list(n.waiters):
            if not fut.done():
                fut.set_result(None)
