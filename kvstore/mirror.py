"""The local mirror of etcd's `ciliate/state/` keys that make the cluster
view: a list (`reset`) or a watch event (`apply`) goes in, a `ClusterView`
comes out. It also notices when a key this node owns disappears or is
taken over (an external delete, an expired lease), so the publisher can put
it back. Pure: no I/O, no asyncio.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from kvstore import layout
from kvstore.model import ClusterView, NodeInfo, RemoteEndpoint


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


class Mirror:
    def __init__(self, local_node: str) -> None:
        self.local_node = local_node
        self.revision = 0
        self._nodes: dict[str, NodeInfo] = {}
        self._endpoints: dict[IPv4Address | IPv6Address, RemoteEndpoint] = {}
        self._identities: dict[int, frozenset[str]] = {}
        self._view: ClusterView | None = None

    def reset(self, kvs: Iterable[tuple[bytes, bytes]], revision: int) -> Change:
        """Replace everything with a fresh list taken at `revision` (always
        reported as a view change: the caller tells its listener after a
        relist even when nothing moved)."""
        self._nodes, self._endpoints, self._identities = {}, {}, {}
        for key, value in kvs:
            self._put(key, value)
        self.revision = revision
        self._view = None
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
            self._view = ClusterView(
                nodes={n: info for n, info in self._nodes.items() if n != me},
                endpoints={ip: ep for ip, ep in self._endpoints.items() if ep.node != me},
                identities=self._identities,
                revision=self.revision,
            )
        elif self._view.revision != self.revision:
            self._view = ClusterView(self._view.nodes, self._view.endpoints, self._view.identities, self.revision)
        return self._view

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
            return self._set(self._identities, k.identity, labels)
        if k.kind == "node":
            info = layout.parse_node_value(value)
            if info is not None and info.name != k.node:
                info = None
            return self._set(self._nodes, k.node, info)
        if k.kind == "ip":
            return self._set(self._endpoints, k.ip, layout.parse_ip_value(k.ip, value))
        return False

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
            gone = self._identities.pop(k.identity, None) is not None
        elif k.kind == "node":
            gone = self._nodes.pop(k.node, None) is not None
            if gone and k.node == me:
                self._view = None
                return Change(lost=key)
        elif k.kind == "ip":
            ep = self._endpoints.pop(k.ip, None)
            gone = ep is not None
            if gone and ep.node == me:
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
