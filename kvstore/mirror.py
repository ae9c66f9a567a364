"""The local mirror of etcd's `ciliate/state/` keys that make the cluster
view: a list (`reset`) or a watch event (`apply`) goes in, a `ClusterView`
comes out. It also notices when a key this node owns disappears or is
taken over (an external delete, an expired lease), so the publisher can put
it back. Pure: no I/O, no asyncio.

The other nodes' endpoints are kept apart as they change, and each view
says which addresses changed since the previous one (ViewDelta): at 50,000
remote pods a view rebuilt by filtering every endpoint, and consumers that
compared every endpoint, cost more than the event itself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

import immutables

from kvstore import layout
from kvstore.model import ClusterView, NodeInfo, RemoteEndpoint, ViewDelta


@dataclass(frozen=True)
class Change:
    """What one list or event changed: the view; `lost`, a key we own that
    went away or was taken; `freed`, another node's endpoint key that was
    deleted (we may have been refused it); `relisted`, everything."""

    view: bool = False
    lost: bytes | None = None
    freed: bytes | None = None
    relisted: bool = False


NOTHING = Change()


IPAddress = IPv4Address | IPv6Address
JOURNAL = 1024  # views whose changes changed_since() can still union


class Mirror:
    def __init__(self, local_node: str) -> None:
        self.local_node = local_node
        self.revision = 0
        self._nodes: dict[str, NodeInfo] = {}
        self._endpoints: dict[IPAddress, RemoteEndpoint] = {}
        # Persistent maps: a view takes them as they are (O(1)), and the
        # next event's change costs O(log n), not a copy of the cluster.
        self._identities: immutables.Map[int, frozenset[str]] = immutables.Map()
        self._view: ClusterView | None = None
        # Kept as they change, for the views: the other nodes' endpoints,
        # and by identity (a change of an identity's labels changes theirs).
        self._others: immutables.Map[IPAddress, RemoteEndpoint] = immutables.Map()
        self._by_identity: dict[int, set[IPAddress]] = {}
        # Since the last view handed out: changed addresses (None: anything
        # may have, e.g. after a relist) and whether a node changed.
        self._changed: set[IPAddress] | None = None
        self._nodes_changed = True
        self._last: ClusterView | None = None
        # (serial of each view handed out, the addresses changed from the one
        # before, None: unknown or a node changed): a consumer that did not
        # see every view (several events came while it was busy) still
        # patches by their union instead of walking the cluster.
        self._journal: deque[tuple[int, frozenset[IPAddress] | None]] = deque(maxlen=JOURNAL)

    def reset(self, kvs: Iterable[tuple[bytes, bytes]], revision: int) -> Change:
        """Replace everything with a fresh list taken at `revision` (always
        reported as a view change: the caller tells its listener after a
        relist even when nothing moved)."""
        self._nodes, self._endpoints, self._identities = {}, {}, immutables.Map()
        self._others, self._by_identity = immutables.Map(), {}
        for key, value in kvs:
            self._put(key, value)
        self.revision = revision
        self._view = None
        self._changed, self._nodes_changed = None, True
        return Change(view=True, relisted=True)

    def apply(self, deleted: bool, key: bytes, value: bytes, revision: int) -> Change:
        """One watch event (etcd delivers them in revision order)."""
        self.revision = max(self.revision, revision)
        parsed = layout.parse_key(key)
        if parsed is None:
            return NOTHING
        if deleted:
            return self._delete(parsed, key)
        before = self._owner(parsed)
        changed = self._put(key, value, parsed)
        lost = before == self.local_node and self._owner(parsed) != self.local_node
        if changed:
            self._view = None
        return Change(view=changed and self._visible(parsed, before), lost=key if lost else None)

    def view(self) -> ClusterView:
        if self._view is None:
            me = self.local_node
            last = self._last
            delta = None
            if last is not None and self._changed is not None:
                delta = ViewDelta(last.serial, frozenset(self._changed), self._nodes_changed)
            self._view = ClusterView(
                nodes={n: info for n, info in self._nodes.items() if n != me},
                endpoints=self._others,
                identities=self._identities,
                revision=self.revision,
                serial=(last.serial if last else 0) + 1,
                delta=delta,
            )
        elif self._view.revision != self.revision:
            v = self._view
            self._view = ClusterView(v.nodes, v.endpoints, v.identities, self.revision, v.serial + 1, ViewDelta(v.serial, frozenset(), False))
        if self._view is not self._last:
            self._last = self._view
            self._changed, self._nodes_changed = set(), False
            d = self._view.delta
            self._journal.append((self._view.serial, None if d is None or d.nodes else d.endpoints))
        return self._view

    def changed_since(self, serial: int, upto: int) -> frozenset[IPAddress] | None:
        """The addresses whose entry (or identity's labels) may differ
        between the views numbered `serial` and `upto`, both handed out by
        this mirror; None when not known (a relist, a node change, or
        older than the journal): compare everything."""
        if not serial or upto < serial:
            return None
        steps = [c for s, c in self._journal if serial < s <= upto]
        if len(steps) != upto - serial or any(c is None for c in steps):
            return None
        return frozenset().union(*steps)

    def identity_ids(self) -> frozenset[int]:
        return frozenset(self._identities)

    # -- internals -----------------------------------------------------------

    def _owner(self, k: layout.Key) -> str | None:
        if k.kind == "ip":
            ep = self._endpoints.get(k.ip)
            return ep.node if ep else None
        if k.kind == "node":
            return k.node if k.node in self._nodes else None
        return None

    def _visible(self, k: layout.Key, before_owner: str | None) -> bool:
        """Does a change of this key show in the view (which hides our own)?"""
        if k.kind == "id":
            return True
        if k.kind == "node":
            return k.node != self.local_node
        if k.kind == "ip":
            return any(o not in (None, self.local_node) for o in (before_owner, self._owner(k)))
        return False

    def _put(self, key: bytes, value: bytes, parsed: layout.Key | None = None) -> bool:
        k = parsed or layout.parse_key(key)
        if k is None:
            return False
        if k.kind == "id":
            labels = layout.parse_labels_value(value)
            return self._set_identity(k.identity, labels)
        if k.kind == "node":
            info = layout.parse_node_value(value)
            if info is not None and info.name != k.node:
                info = None
            return self._set_node(k.node, info)
        if k.kind == "ip":
            return self._set_endpoint(k.ip, layout.parse_ip_value(k.ip, value))
        return False

    def _set_identity(self, identity: int, labels: frozenset[str] | None) -> bool:
        before = self._identities
        self._identities = _set_in(before, identity, labels)
        changed = self._identities is not before
        if changed and self._changed is not None:
            self._changed.update(self._by_identity.get(identity, ()))
        return changed

    def _set_node(self, name: str, info: NodeInfo | None) -> bool:
        changed = self._set(self._nodes, name, info)
        self._nodes_changed |= changed
        return changed

    def _set_endpoint(self, ip: IPAddress, ep: RemoteEndpoint | None) -> bool:
        old = self._endpoints.get(ip)
        if not self._set(self._endpoints, ip, ep):
            return False
        ep = self._endpoints.get(ip)
        if old is not None and old.node != self.local_node:
            self._others = self._others.delete(ip)
            held = self._by_identity[old.identity]
            held.discard(ip)
            if not held:
                del self._by_identity[old.identity]
        if ep is not None and ep.node != self.local_node:
            self._others = self._others.set(ip, ep)
            self._by_identity.setdefault(ep.identity, set()).add(ip)
        if self._changed is not None and (old is not None and old.node != self.local_node or ep is not None and ep.node != self.local_node):
            self._changed.add(ip)
        return True

    @staticmethod
    def _set(d: dict, key, value) -> bool:
        """Store a parsed value; a malformed one removes the entry."""
        if value is None:
            return d.pop(key, None) is not None
        if d.get(key) == value:
            return False
        d[key] = value
        return True

    def _delete(self, k: layout.Key, key: bytes) -> Change:
        me = self.local_node
        if k.kind == "ref":
            return Change(lost=key if k.node == me else None)
        if k.kind == "id":
            gone = self._set_identity(k.identity, None)
        elif k.kind == "node":
            gone = self._set_node(k.node, None)
            if gone and k.node == me:
                self._view = None
                return Change(lost=key)
        elif k.kind == "ip":
            ep = self._endpoints.get(k.ip)
            gone = self._set_endpoint(k.ip, None)
            if gone and ep is not None and ep.node == me:
                self._view = None
                return Change(lost=key)
            if gone:
                self._view = None
                return Change(view=True, freed=key)
        else:
            return NOTHING
        if gone:
            self._view = None
        return Change(view=gone)


def _set_in(m: immutables.Map, key, value) -> immutables.Map:
    """Mirror._set for a persistent map: the same map when nothing changed."""
    if value is None:
        return m.delete(key) if key in m else m
    if m.get(key) == value:
        return m
    return m.set(key, value)
