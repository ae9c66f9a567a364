"""State-of-the-world ADS (StreamAggregatedResources) for one stream. No I/O
of its own (see session.py).

Per type the stream remembers what it last sent (resources and nonce) and
what Envoy last acknowledged. Rules, as Envoy's xDS protocol documents them
and go-control-plane implements them:

- every response carries a fresh nonce; a request whose response_nonce is not
  the latest one sent for its type is stale and ignored entirely;
- a request echoing the latest nonce without error_detail is an ACK;
- with error_detail it is a NACK: the error is recorded in the cache for the
  agent, and nothing is re-sent. The rejected content stays "last sent", so
  the stream stays quiet until the snapshot changes to something different
  (never the resend-on-NACK loop of go-control-plane issue 962);
- a type is sent only when what Envoy should hold differs from what was last
  sent (or Envoy asks for a different set of names); listeners and clusters
  go out as the full set (the protocol treats a missing one as deleted),
  route configurations only as the ones that changed;
- on a snapshot change, types go out in ADS order: clusters, listeners,
  routes; a cluster that listeners Envoy still runs refer to is held back
  until they are replaced (session.held_clusters).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryRequest

from . import serialize
from .errors import NackError
from .resources import ADS_ORDER, CLUSTER, WILDCARD_TYPES, Resource
from .session import Session, held_clusters, required_names
from .snapshot import Snapshot


@dataclass
class _TypeState:
    wildcard: bool
    names: frozenset[str] = frozenset()
    sent: dict[str, Resource] | None = None  # None: nothing sent yet
    sent_nonce: str = ""
    sent_version: str = ""
    awaiting: bool = False  # sent, neither ACKed nor NACKed yet
    acked: dict[str, Resource] = field(default_factory=dict)


class SotwSession(Session):
    protocol = "sotw"

    def __init__(self, cache, send) -> None:
        super().__init__(cache, send)
        self.types: dict[str, _TypeState] = {}

    async def on_request(self, req: DiscoveryRequest) -> None:
        t = req.type_url
        st = self.types.get(t)
        if st is None:
            if req.response_nonce:
                return  # a nonce from a previous stream: stale
            st = self.types[t] = _TypeState(wildcard=t in WILDCARD_TYPES and not req.resource_names)
        elif req.response_nonce != st.sent_nonce:
            return  # stale nonce: Envoy has not seen our latest response yet
        elif st.awaiting:
            st.awaiting = False
            if self.is_nack(req):
                assert st.sent is not None
                self.cache.report_nack(
                    self.node_id,
                    NackError(req.error_detail.message, t, tuple(sorted(st.sent)), st.sent_version),
                )
            else:
                st.acked = dict(st.sent or {})
                self.cache.count_ack(t)
        names = frozenset(req.resource_names) - {"*"}
        if not st.wildcard:
            st.names = names
            # Envoy dropped what it unsubscribed: it no longer holds it.
            st.acked = {n: r for n, r in st.acked.items() if n in names}
        await self._push(t)
        if t != CLUSTER and CLUSTER in self.types:
            await self._push(CLUSTER)  # an ACK may lift a make-before-break hold

    async def on_snapshot(self) -> None:
        for t in ADS_ORDER:
            if t in self.types:
                await self._push(t)

    def _want(self, t: str, snap: Snapshot) -> dict[str, Resource]:
        st = self.types[t]
        have = snap.of(t)
        want = dict(have) if st.wildcard else {n: have[n] for n in st.names if n in have}
        if t == CLUSTER:
            want.update(held_clusters(snap, {k: v.acked for k, v in self.types.items()}))
        return want

    async def _push(self, t: str) -> None:
        st = self.types[t]
        snap = self.snapshot
        if self.node_id is None or self.cache.get_snapshot(self.node_id) is None:
            return
        want = self._want(t, snap)
        if st.sent is not None and _same(want, st.sent):
            return
        if st.sent is None and not st.wildcard and not want:
            return  # named resources we do not have (yet): Envoy keeps waiting
        if st.wildcard:
            out = [want[n] for n in sorted(want)]
        else:
            # RDS in SotW is incremental: a response carries only the route
            # configurations that changed, and one left out is not deleted
            # (Envoy drops it with the listener naming it). Re-sending all of
            # them would make Envoy re-validate every rule of every listener
            # on each change.
            prev = st.sent or {}
            out = [want[n] for n in sorted(want) if n not in prev or prev[n].version != want[n].version]
            if not out:
                st.sent = want  # only unsubscribed names went away: nothing to tell Envoy
                return
        st.sent = want
        st.sent_nonce = self.next_nonce()
        st.sent_version = snap.version
        st.awaiting = True
        self.cache.count_push(t)
        await self.send(serialize.discovery_response(snap.version, t, st.sent_nonce, [r.body for r in out]))

    def in_sync(self, snap: Snapshot) -> bool:
        for t in ADS_ORDER:
            need = required_names(snap, t)
            st = self.types.get(t)
            if st is None:
                if need:
                    return False
                continue
            if st.awaiting or not need <= (set(snap.of(t)) if st.wildcard else st.names):
                return False
            have = snap.of(t)
            if st.wildcard:
                if not _same(have, st.acked):
                    return False
            # Named (RDS): Envoy stays subscribed to a removed listener's
            # route configuration until that listener has drained (its
            # drain time, seconds); the snapshot no longer has it and SotW
            # has no way to say it is gone, so it is not Envoy's to ACK.
            # Only the configurations the snapshot's listeners need count.
            elif any(n not in st.acked or st.acked[n].version != have[n].version for n in need):
                return False
        return True


def _same(a: dict[str, Resource], b: dict[str, Resource]) -> bool:
    return a.keys() == b.keys() and all(a[k].version == b[k].version for k in a)
