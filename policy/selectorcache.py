"""The selector cache: which selectors exist, and which identities each selects.

Every peer and subject selector of the policies in force is resolved once
and kept up to date as identities come and go, the way Cilium's
SelectorCache serves pkg/policy. Label-dependent selectors are indexed by
one (key, value) they require, so a new label identity is matched against
its candidates only; CIDR selectors are indexed by family and prefix, so a
new CIDR identity finds the selectors containing it through its supernets
(<= 33 for IPv4, <= 129 for IPv6, only the lengths some selector has).
What the world entities and a default-route CIDR select depends on the
node's stack (policy/families.py). Membership changes are recorded
(`take_stale`) for the compiler to re-merge the policies that use those
selectors. Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from policy.families import WORLD_ENTITIES, IPNetwork, Stack, net_key, within
from policy.identity import CLUSTER_RESERVED, IDENTITY_ANY, IDENTITY_HOST, IDENTITY_REMOTE_NODE, RESERVED_BY_NAME
from policy.model import AnyPeer, CIDRPeer, EndpointPeer, EntityPeer, NodePeer, Peer
from policy.selector import SelectorIndex


def cidr_selects(peer: CIDRPeer, net: IPNetwork) -> bool:
    return within(net, peer.net) and not any(within(net, e) for e in peer.excepts)


def _depends_on_labels(peer: Peer) -> bool:
    return isinstance(peer, EndpointPeer) or (isinstance(peer, EntityPeer) and peer.name == "cluster")


def _world_family(peer: Peer) -> tuple[bool, int | None]:
    """(is a world entity, the family it is about: None for both)."""
    if isinstance(peer, EntityPeer) and peer.name in WORLD_ENTITIES:
        return True, WORLD_ENTITIES[peer.name]
    return False, None


def _indexed_kv(peer: EndpointPeer) -> tuple[str, str] | None:
    return next(((r.key, r.values[0]) for r in peer.selector.requirements if r.op == "In" and len(r.values) == 1), None)


class SelectorCache:
    """Selector -> member identities and users (policy keys), kept incrementally.

    `members` is read directly on the compiler's merge path; only this class
    writes it.
    """

    def __init__(self, cidrs: Mapping[IPNetwork, int], stack: Stack = Stack.IPV4) -> None:
        self.stack = stack
        self.members: dict[Peer, frozenset[int]] = {}
        self._users: dict[Peer, set[str]] = {}
        # The identities selectors choose from: label identities (told here),
        # and CIDR identities by prefix: the ipcache's own map, read-only here
        # (a copy would double the prefix hashing of a 20k-CIDR policy).
        self._labels = SelectorIndex()
        self._cidrs = cidrs
        self._by_kv: dict[tuple[str, str], set[Peer]] = {}
        self._unindexed: set[Peer] = set()
        # World entity selectors -> the family whose CIDR identities are all
        # theirs (None: both).
        self._world: dict[Peer, int | None] = {}
        self._cidr_by_net: dict[tuple[int, int, int], set[CIDRPeer]] = {}
        # How many CIDR selectors have each (family, prefix length):
        # supernets of a length no selector has are not looked up at all.
        self._cidr_lens: dict[tuple[int, int], int] = {}
        # Selectors whose membership changed, and the identities that moved.
        self._stale: dict[Peer, set[int]] = {}
        # Nodes: remote node identities -> their labels, and this node's own
        # labels (None: unknown). What fromNodes/toNodes, `remote-node` and
        # `cluster` select follows them; node selectors are few, so a change
        # re-resolves them all.
        self._nodes: dict[int, Mapping[str, str]] = {}
        self._own_labels: Mapping[str, str] | None = None
        self._node_dependent: set[Peer] = set()

    # ------------------------------------------------------------ selectors

    def users(self, peer: Peer) -> Iterable[str]:
        return self._users.get(peer, ())

    def add(self, peer: Peer, user: str) -> None:
        users = self._users.get(peer)
        if users is not None:
            users.add(user)
            return
        self._users[peer] = {user}
        self.members[peer] = self._resolve(peer)
        if isinstance(peer, EndpointPeer):
            kv = _indexed_kv(peer)
            if kv is None:
                self._unindexed.add(peer)
            else:
                self._by_kv.setdefault(kv, set()).add(peer)
        elif _depends_on_labels(peer):
            self._unindexed.add(peer)
        if isinstance(peer, NodePeer) or (isinstance(peer, EntityPeer) and peer.name in ("remote-node", "cluster")):
            self._node_dependent.add(peer)
        is_world, family = _world_family(peer)
        if is_world:
            self._world[peer] = family
        if isinstance(peer, CIDRPeer):
            self._cidr_by_net.setdefault(net_key(peer.net), set()).add(peer)
            length = (peer.net.version, peer.net.prefixlen)
            self._cidr_lens[length] = self._cidr_lens.get(length, 0) + 1

    def drop(self, peer: Peer, user: str) -> None:
        users = self._users.get(peer)
        if users is None:
            return
        users.discard(user)
        if users:
            return
        del self._users[peer]
        del self.members[peer]
        self._unindexed.discard(peer)
        self._node_dependent.discard(peer)
        self._world.pop(peer, None)
        if isinstance(peer, CIDRPeer):
            key = net_key(peer.net)
            by_net = self._cidr_by_net[key]
            by_net.discard(peer)
            if not by_net:
                del self._cidr_by_net[key]
            length = (peer.net.version, peer.net.prefixlen)
            n = self._cidr_lens[length] - 1
            if n <= 0:
                del self._cidr_lens[length]
            else:
                self._cidr_lens[length] = n
        if isinstance(peer, EndpointPeer):
            kv = _indexed_kv(peer)
            if kv is not None:
                self._by_kv[kv].discard(peer)

    def _resolve(self, peer: Peer) -> frozenset[int]:
        if isinstance(peer, EndpointPeer):
            return self._labels.resolve(peer.selector)
        if isinstance(peer, AnyPeer):
            return frozenset({IDENTITY_ANY})
        if isinstance(peer, NodePeer):
            out = {i for i, labels in self._nodes.items() if peer.selector.matches(labels)}
            if self._own_labels is not None and peer.selector.matches(self._own_labels):
                out.add(IDENTITY_HOST)
            return frozenset(out)
        if isinstance(peer, EntityPeer):
            is_world, family = _world_family(peer)
            if is_world:
                cidrs = (i for net, i in self._cidrs.items() if family is None or net.version == family)
                return self.stack.world_of(family) | frozenset(cidrs)
            if peer.name == "cluster":
                return self._labels.all() | CLUSTER_RESERVED | frozenset(self._nodes)
            if peer.name == "remote-node":
                return frozenset({IDENTITY_REMOTE_NODE, *self._nodes})
            return frozenset({RESERVED_BY_NAME[peer.name]})
        if not isinstance(peer, CIDRPeer):
            # A toServices or toFQDNs item nobody resolved (policy/services.py,
            # policy/fqdn_resolve.py) selects nothing: fail closed.
            return frozenset()
        out = {ident for net, ident in self._cidrs.items() if cidr_selects(peer, net)}
        if peer.net.prefixlen == 0:
            # The family's default route: its world identity in this stack
            # (none on a node that does not run the family).
            out |= self.stack.world_of(peer.net.version)
        return frozenset(out)

    # ------------------------------------------------------------ identities

    def _label_candidates(self, labels: Mapping[str, str]) -> set[Peer]:
        """Label-dependent selectors that may select an identity with these labels."""
        candidates: set[Peer] = set(self._unindexed)
        for kv in labels.items():
            candidates |= self._by_kv.get(kv, set())
        return candidates

    def add_identity(self, ident: int, labels: Mapping[str, str]) -> None:
        """A label identity appeared (labels as selectors see them)."""
        self._labels.add(ident, labels)
        for peer in self._label_candidates(labels):
            if isinstance(peer, EndpointPeer) and not peer.selector.matches(labels):
                continue
            self.members[peer] = self.members[peer] | {ident}
            self._stale.setdefault(peer, set()).add(ident)

    def remove_identity(self, ident: int) -> None:
        labels = self._labels.labels.get(ident, {})
        self._labels.remove(ident)
        for peer in self._label_candidates(labels):
            members = self.members[peer]
            if ident in members:
                self.members[peer] = members - {ident}
                self._stale.setdefault(peer, set()).add(ident)

    def add_cidrs(self, added: Iterable[tuple[IPNetwork, int]]) -> None:
        """CIDR identities appeared (already in the ipcache's map); each
        affected selector is rebuilt once."""
        hits = self._cidr_hits(added)
        for peer, idents in hits.items():
            self.members[peer] = self.members[peer] | idents
            self._stale.setdefault(peer, set()).update(idents)

    def remove_cidrs(self, removed: Iterable[tuple[IPNetwork, int]]) -> None:
        hits = self._cidr_hits(removed)
        for peer, idents in hits.items():
            self.members[peer] = self.members[peer] - idents
            self._stale.setdefault(peer, set()).update(idents)

    def _cidr_hits(self, pairs: Iterable[tuple[IPNetwork, int]]) -> dict[Peer, set[int]]:
        """Selector -> the given CIDR identities it selects. Linear in the
        pairs: each prefix finds its selectors through its supernets."""
        hits: dict[Peer, set[int]] = {}
        for net, ident in pairs:
            version = net.version
            for peer, family in self._world.items():
                if family is None or family == version:
                    hits.setdefault(peer, set()).add(ident)
            addr, bits = int(net.network_address), net.max_prefixlen
            for v, plen in self._cidr_lens:
                if v != version or plen > net.prefixlen:
                    continue
                shift = bits - plen
                for peer in self._cidr_by_net.get((v, (addr >> shift) << shift, plen), ()):
                    if cidr_selects(peer, net):
                        hits.setdefault(peer, set()).add(ident)
        return hits

    def set_nodes(self, nodes: Mapping[int, Mapping[str, str]], own_labels: Mapping[str, str] | None) -> None:
        """The remote nodes' identities with their labels, and this node's labels."""
        nodes = {i: dict(ls) for i, ls in nodes.items()}
        own = dict(own_labels) if own_labels is not None else None
        if nodes == self._nodes and own == self._own_labels:
            return
        self._nodes, self._own_labels = nodes, own
        for peer in self._node_dependent:
            new = self._resolve(peer)
            old = self.members[peer]
            if new != old:
                self.members[peer] = new
                self._stale.setdefault(peer, set()).update(new ^ old)

    # ------------------------------------------------------------ changes

    @property
    def has_stale(self) -> bool:
        return bool(self._stale)

    def take_stale(self) -> dict[Peer, set[int]]:
        """Selectors whose members changed since the last call, and which identities moved."""
        out, self._stale = self._stale, {}
        return out
