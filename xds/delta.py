"""Incremental ("delta") ADS (DeltaAggregatedResources) for one stream. No
I/O of its own (see session.py).

Per type the stream tracks the subscription (wildcard for LDS/CDS when the
first request names nothing, or names "*"; explicit names otherwise) and the
version of every resource Envoy holds (seeded from initial_resource_versions
on reconnect). A push sends exactly the resources whose content version
differs and names the ones that went away in removed_resources; resource
versions are content digests, so unchanged resources are never re-sent.

ACK/NACK: every response has a nonce; a request echoing an outstanding nonce
acknowledges it, or rejects it when error_detail is set. On a NACK the error
goes to the cache and nothing is re-sent: the rejected versions stay recorded
as "held", so only a snapshot with different content produces a new push.
Subscription changes are applied whatever the nonce says.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from envoy_data_plane.envoy.service.discovery.v3 import DeltaDiscoveryRequest

from . import serialize
from .errors import NackError
from .resources import ADS_ORDER, CLUSTER, WILDCARD_TYPES, Resource
from .session import Session, held_clusters, required_names
from .snapshot import Snapshot


@dataclass
class _TypeState:
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    known: dict[str, str] = field(default_factory=dict)  # name -> version Envoy holds (or was sent)
    # nonce -> (snapshot version, what that response carried: name -> Resource, None = removed)
    pending: dict[str, tuple[str, dict[str, Resource | None]]] = field(default_factory=dict)
    acked: dict[str, Resource] = field(default_factory=dict)


class DeltaSession(Session):
    protocol = "delta"

    def __init__(self, cache, send) -> None:
        super().__init__(cache, send)
        self.types: dict[str, _TypeState] = {}

    async def on_request(self, req: DeltaDiscoveryRequest) -> None:
        t = req.type_url
        st = self.types.get(t)
        first = st is None
        if st is None:
            st = self.types[t] = _TypeState()
            st.known.update(req.initial_resource_versions or {})
            if t in WILDCARD_TYPES and not req.resource_names_subscribe:
                st.wildcard = True
        if req.response_nonce and req.response_nonce in st.pending:
            version, carried = st.pending.pop(req.response_nonce)
            if self.is_nack(req):
                self.cache.report_nack(self.node_id, NackError(req.error_detail.message, t, tuple(carried), version))
            else:
                self.cache.count_ack(t)
                # What that response carried, not what was sent since: a later
                # response may still be in flight.
                for n, r in carried.items():
                    if r is not None:
                        st.acked[n] = r
                    else:
                        st.acked.pop(n, None)
        for n in req.resource_names_subscribe:
            if n == "*":
                st.wildcard = True
            else:
                st.names.add(n)
                if not first:
                    st.known.pop(n, None)  # an explicit (re)subscribe asks for the resource again
        for n in req.resource_names_unsubscribe:
            if n == "*":
                st.wildcard = False
            else:
                st.names.discard(n)
                st.known.pop(n, None)
                st.acked.pop(n, None)
        await self._push(t)
        if t != CLUSTER and CLUSTER in self.types:
            await self._push(CLUSTER)

    async def on_snapshot(self) -> None:
        for t in ADS_ORDER:
            if t in self.types:
                await self._push(t)

    def _scope(self, st: _TypeState, snap: Snapshot, t: str) -> dict[str, Resource]:
        have = snap.of(t)
        want = dict(have) if st.wildcard else {n: have[n] for n in st.names if n in have}
        if t == CLUSTER:
            want.update(held_clusters(snap, {k: v.acked for k, v in self.types.items()}))
        return want

    async def _push(self, t: str) -> None:
        if self.node_id is None or self.cache.get_snapshot(self.node_id) is None:
            return
        st = self.types[t]
        snap = self.snapshot
        want = self._scope(st, snap, t)
        changed = [want[n] for n in sorted(want) if st.known.get(n) != want[n].version]
        in_scope = (lambda n: True) if st.wildcard else (lambda n: n in st.names)
        removed = sorted(n for n in st.known if n not in want and in_scope(n))
        if not changed and not removed:
            return
        for r in changed:
            st.known[r.name] = r.version
        for n in removed:
            del st.known[n]
        nonce = self.next_nonce()
        carried: dict[str, Resource | None] = {r.name: r for r in changed}
        carried.update((n, None) for n in removed)
        st.pending[nonce] = (snap.version, carried)
        self.cache.count_push(t)
        await self.send(
            serialize.delta_discovery_response(
                snap.version, t, nonce, [(r.name, r.version, r.body) for r in changed], removed
            )
        )

    def in_sync(self, snap: Snapshot) -> bool:
        for t in ADS_ORDER:
            need = required_names(snap, t)
            st = self.types.get(t)
            if st is None:
                if need:
                    return False
                continue
            if st.pending or not need <= (set(snap.of(t)) if st.wildcard else st.names):
                return False
            have = snap.of(t)
            want = have if st.wildcard else {n: have[n] for n in st.names if n in have}
            if want.keys() != st.acked.keys() or any(want[n].version != st.acked[n].version for n in want):
                return False
        return True
