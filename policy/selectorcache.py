"""The selector cache: which selectors exist, and which identities each selects.

Every peer and subject selector of the policies in force is resolved once
and kept up to date as identities come and go, the way Cilium's
SelectorCache serves pkg/policy. Label-dependent selectors are indexed by
one (key, value) they require, so a new label identity is matched against
its candidates only; CIDR selectors are indexed by prefix, so a new CIDR
identity finds the selectors containing it through its <= 33 supernets.
Membership changes are recorded (`take_stale`) for the compiler to re-merge
the policies that use those selectors. Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from ipaddress import IPv4Network

from policy.identity import CLUSTER_RESERVED, IDENTITY_ANY, IDENTITY_WORLD, RESERVED_BY_NAME
from policy.model import AnyPeer, CIDRPeer, EndpointPeer, EntityPeer, Peer
from policy.selector import SelectorIndex


def within(net: IPv4Network, outer: IPv4Network) -> bool:
    """net is inside outer (ipaddress.subnet_of, without its overhead)."""
    shift = 32 - outer.prefixlen
    return net.prefixlen >= outer.prefixlen and (
        int(net.network_address) >> shift == int(outer.network_address) >> shift
    )


def cidr_selects(peer: CIDRPeer, net: IPv4Network) -> bool:
    return within(net, peer.net) and not any(within(net, e) for e in peer.excepts)


def _depends_on_labels(peer: Peer) -> bool:
    return isinstance(peer, EndpointPeer) or (isinstance(peer, EntityPeer) and peer.name == "cluster")


def _depends_on_cidrs(peer: Peer) -> bool:
    return isinstance(peer, CIDRPeer) or (isinstance(peer, EntityPeer) and peer.name == "world")


def _net_key(net: IPv4Network) -> tuple[int, int]:
    return (int(net.network_address), net.prefixlen)


def _indexed_kv(peer: EndpointPeer) -> tuple[str, str] | None:
    return next(((r.key, r.values[0]) for r in peer.selector.requirements if r.op == "In" and len(r.values) == 1), None)


class SelectorCache:
    """Selector -> member identities and users (policy keys), kept incrementally.

    `members` is read directly on the compiler's merge path; only this class
    writes it.
    """

    def __init__(self, cidrs: Mapping[IPv4Network, int]) -> None:
        self.members: dict[Peer, frozenset[int]] = {}
        self._users: dict[Peer, set[str]] = {}
        # The identities selectors choose from: label identities (told here),
        # and CIDR identities by prefix: the ipcache's own map, read-only here
        # (a copy would double the prefix hashing of a 20k-CIDR policy).
        self._labels = SelectorIndex()
        self._cidrs = cidrs
        self._by_kv: dict[tuple[str, str], set[Peer]] = {}
        self._unindexed: set[Peer] = set()
        # `world` entity selectors: every CIDR identity is theirs.
        self._world: set[Peer] = set()
        self._cidr_by_net: dict[tuple[int, int], set[CIDRPeer]] = {}
        # How many CIDR selectors have each prefix length: supernets of a
        # length no selector has are not looked up at all.
        self._cidr_lens: dict[int, int] = {}
        # Selectors whose membership changed, and the identities that moved.
        self._stale: dict[Peer, set[int]] = {}

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
        if isinstance(peer, EntityPeer) and peer.name == "world":
            self._world.add(peer)
        if isinstance(peer, CIDRPeer):
            self._cidr_by_net.setdefault(_net_key(peer.net), set()).add(peer)
            self._cidr_lens[peer.net.prefixlen] = self._cidr_lens.get(peer.net.prefixlen, 0) + 1

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
        self._world.discard(peer)
        if isinstance(peer, CIDRPeer):
            key = _net_key(peer.net)
            by_net = self._cidr_by_net[key]
            by_net.discard(peer)
            if not by_net:
                del self._cidr_by_net[key]
            n = self._cidr_lens[peer.net.prefixlen] - 1
            if n <= 0:
                del self._cidr_lens[peer.net.prefixlen]
            else:
                self._cidr_lens[peer.net.prefixlen] = n
        if isinstance(peer, EndpointPeer):
            kv = _indexed_kv(peer)
            if kv is not None:
                self._by_kv[kv].discard(peer)

    def _resolve(self, peer: Peer) -> frozenset[int]:
        if isinstance(peer, EndpointPeer):
            return self._labels.resolve(peer.selector)
        if isinstance(peer, AnyPeer):
            return frozenset({IDENTITY_ANY})
        if isinstance(peer, EntityPeer):
            if peer.name == "world":
                return frozenset({IDENTITY_WORLD, *self._cidrs.values()})
            if peer.name == "cluster":
                return self._labels.all() | CLUSTER_RESERVED
            return frozenset({RESERVED_BY_NAME[peer.name]})
        assert isinstance(peer, CIDRPeer)
        out = {ident for net, ident in self._cidrs.items() if cidr_selects(peer, net)}
        if peer.net.prefixlen == 0:
            out.add(IDENTITY_WORLD)
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

    def add_cidrs(self, added: Iterable[tuple[IPv4Network, int]]) -> None:
        """CIDR identities appeared (already in the ipcache's map); each
        affected selector is rebuilt once."""
        hits = self._cidr_hits(added)
        for peer, idents in hits.items():
            self.members[peer] = self.members[peer] | idents
            self._stale.setdefault(peer, set()).update(idents)

    def remove_cidrs(self, removed: Iterable[tuple[IPv4Network, int]]) -> None:
        hits = self._cidr_hits(removed)
        for peer, idents in hits.items():
            self.members[peer] = self.members[peer] - idents
            self._stale.setdefault(peer, set()).update(idents)

    def _cidr_hits(self, pairs: Iterable[tuple[IPv4Network, int]]) -> dict[Peer, set[int]]:
        """Selector -> the given CIDR identities it selects. Linear in the
        pairs: each prefix finds its selectors through its supernets."""
        hits: dict[Peer, set[int]] = {}
        for net, ident in pairs:
            for peer in self._world:
                hits.setdefault(peer, set()).add(ident)
            addr = int(net.network_address)
            for plen in self._cidr_lens:
                if plen > net.prefixlen:
                    continue
                shift = 32 - plen
                for peer in self._cidr_by_net.get(((addr >> shift) << shift, plen), ()):
                    if cidr_selects(peer, net):
                        hits.setdefault(peer, set()).add(ident)
        return hits

    # ------------------------------------------------------------ changes

    @property
    def has_stale(self) -> bool:
        return bool(self._stale)

    def take_stale(self) -> dict[Peer, set[int]]:
        """Selectors whose members changed since the last call, and which identities moved."""
        out, self._stale = self._stale, {}
        return out
