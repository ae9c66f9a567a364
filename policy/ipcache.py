"""The ipcache: which identity an address has. One home for prefix -> identity.

`PrefixMap` reads one table (CompiledState.ipcache) the way the kernel's
LPM trie does, and answers the questions the compiler, `trace` and the xDS
renderer ask of it: the identity of an address (longest-prefix match), the
table's prefixes containing a prefix, and an identity's address space (its
prefixes minus the more specific prefixes of other identities).

`IPCache` keeps the table incrementally for the compiler. Precedence per
prefix: endpoint (lowest endpoint id if several share an address) > host >
CIDR identity > the world identities at the default routes of the families
the node runs (policy/families.py), so CIDR rules never select local
endpoints (as in Cilium). CIDR identities are counted per policy that names
the prefix, allocated on first use and released once no policy names them.

Both families share one table and one longest-prefix match: a prefix only
ever matches addresses of its own family (IPv4 and IPv6 prefixes are kept
apart by family in every index), exactly as the kernel keeps one trie per
family. Pure, no I/O.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import immutables

from policy.families import IPAddress, IPNetwork, Stack, host_net, net_key
from policy.identity import IDENTITY_HOST, IDENTITY_REMOTE_NODE, IDENTITY_WORLD, IdentityAllocator

# The owner key of another node's endpoint in IPCache._ip_eps: larger than
# any local endpoint id, so a local endpoint on the same address wins.
REMOTE_OWNER = 1 << 62


class PrefixMap:
    """A read-only view of prefix -> identity, indexed for longest-prefix match."""

    def __init__(self, table: Mapping[IPNetwork, int]) -> None:
        self.table = table
        # (family, prefix length) -> {network address as int: identity}: a
        # lookup is at most one dict probe per prefix length present in the
        # address's family (<= 33 for IPv4, <= 129 for IPv6).
        self._by_len: dict[tuple[int, int], dict[int, int]] = {}
        for net, ident in table.items():
            self._by_len.setdefault((net.version, net.prefixlen), {})[int(net.network_address)] = ident
        self._longest_first: dict[int, list[int]] = {}
        # family -> (shift, table) per prefix length, longest first: what a
        # lookup walks.
        self._probes: dict[int, list[tuple[int, dict[int, int]]]] = {}
        for version, plen in sorted(self._by_len, reverse=True):
            self._longest_first.setdefault(version, []).append(plen)
            bits = 32 if version == 4 else 128
            self._probes.setdefault(version, []).append((bits - plen, self._by_len[(version, plen)]))
        self._nets: dict[tuple[int, int, int], IPNetwork] | None = None
        self._sorted: list[tuple[int, int, int, IPNetwork]] | None = None
        self._by_ident: dict[int, list[IPNetwork]] | None = None

    def lookup(self, addr: IPAddress) -> int:
        """The identity of an address: longest-prefix match among the
        prefixes of its family; world if none (as the kernel answers)."""
        a = int(addr)
        for shift, nets in self._probes.get(addr.version, ()):
            ident = nets.get((a >> shift) << shift)
            if ident is not None:
                return ident
        return IDENTITY_WORLD

    def covering(self, net: IPNetwork) -> list[IPNetwork]:
        """The table's prefixes containing `net` (itself included), shortest first."""
        if self._nets is None:
            self._nets = {net_key(n): n for n in self.table}
        addr, bits = int(net.network_address), net.max_prefixlen
        out = []
        for plen in reversed(self._longest_first.get(net.version, ())):
            if plen > net.prefixlen:
                break
            shift = bits - plen
            outer = self._nets.get((net.version, (addr >> shift) << shift, plen))
            if outer is not None:
                out.append(outer)
        return out

    def inside(self, net: IPNetwork) -> list[IPNetwork]:
        """The table's prefixes strictly inside `net`, in address order."""
        if self._sorted is None:
            self._sorted = sorted((*net_key(n), n) for n in self.table)
        v = net.version
        lo = int(net.network_address)
        hi = int(net.broadcast_address)
        i = bisect_left(self._sorted, (v, lo, -1))
        j = bisect_right(self._sorted, (v, hi, 129))
        return [n for _, _, plen, n in self._sorted[i:j] if plen > net.prefixlen]

    def address_space(self, ident: int) -> list[tuple[IPNetwork, list[IPNetwork]]]:
        """Where `ident` is the longest match: each of its prefixes, with the
        more specific prefixes of other identities carved out of it."""
        if self._by_ident is None:
            by_ident: dict[int, list[IPNetwork]] = {}
            for net, i in self.table.items():
                by_ident.setdefault(i, []).append(net)
            self._by_ident = {i: sorted(v, key=net_key) for i, v in by_ident.items()}
        return [
            (net, sorted(q for q in self.inside(net) if self.table[q] != ident))
            for net in self._by_ident.get(ident, ())
        ]


@dataclass(frozen=True)
class TableFacts:
    """What IPCache knows of one table it handed out: valid for that table
    object only (a state rebuilt with another ipcache must not use them)."""

    table: Mapping[IPNetwork, int]
    by_identity: Mapping[int, frozenset[IPNetwork]]  # identity -> its prefixes
    base: int = 0  # revision of the state `changes` is counted from (0: none)
    changes: frozenset[IPNetwork] | None = None  # prefixes whose entry differs from that state's


class IPCache:
    """The compiler's ipcache, patched per address as endpoints come and go."""

    def __init__(self, identities: IdentityAllocator, host_ips: Iterable[IPAddress] = (), stack: Stack = Stack.IPV4) -> None:
        self._identities = identities
        self.stack = stack
        self.host_ips: frozenset[IPAddress] = frozenset(host_ips)
        # address -> {endpoint id: its identity}
        self._ip_eps: dict[IPAddress, dict[int, int]] = {}
        # policy prefixes: how many policies name each, and their identities
        self._cidr_refs: dict[IPNetwork, int] = {}
        self.cidr_ids: dict[IPNetwork, int] = {}
        # Prefixes no policy names any more; their identities are released
        # once, in release_unused(), so a policy updated in place (unregister,
        # then register) keeps its CIDR identities.
        self._released: set[IPNetwork] = set()
        # A CIDR or host change rebuilds the table (rare, and cheap next to a
        # policy merge); an endpoint change patches its address.
        self._rebuild = True
        self._dirty_addrs: set[IPAddress] = set()
        # Persistent maps: each compiled state holds its own table without a
        # copy, and a pod event costs O(log n) (copying a 50,000-entry dict
        # per event made a cluster's CPU grow with its size). `_by_ident`:
        # identity -> its prefixes, kept alongside for the questions asked
        # per identity (which addresses an L7 rule's peers have).
        self._table: immutables.Map[IPNetwork, int] = immutables.Map()
        self._by_ident: immutables.Map[int, frozenset[IPNetwork]] = immutables.Map()
        # The prefixes the last table() changed from its `prev` (None: not
        # known, it was rebuilt): the datapath writes only those.
        self.last_changes: frozenset[IPNetwork] | None = None
        self.remote_node_ips: frozenset[IPAddress] = frozenset()
        # A remote node's identity: by its labels when it published any
        # (fromNodes/toNodes select them), else `remote-node`.
        self._node_ids: dict[IPAddress, int] = {}
        self._cidr_labels: dict[int, frozenset[str]] | None = None

    @property
    def dirty(self) -> bool:
        return self._rebuild or bool(self._dirty_addrs)

    # ------------------------------------------------------------ inputs

    def upsert_endpoint(self, endpoint_id: int, old: IPAddress | None, new: IPAddress | None, ident: int) -> None:
        if old is not None and old != new:
            self._ip_eps.get(old, {}).pop(endpoint_id, None)
            self._dirty_addrs.add(old)
        if new is not None:
            eps = self._ip_eps.setdefault(new, {})
            if eps.get(endpoint_id) != ident:
                eps[endpoint_id] = ident
                self._dirty_addrs.add(new)

    def delete_endpoint(self, endpoint_id: int, addr: IPAddress | None) -> None:
        if addr is not None:
            self._ip_eps.get(addr, {}).pop(endpoint_id, None)
            self._dirty_addrs.add(addr)

    def set_host_ips(self, host_ips: Iterable[IPAddress]) -> None:
        new = frozenset(host_ips)
        if new != self.host_ips:
            self.host_ips = new
            self._rebuild = True

    def set_remote_node_ips(self, ips: Iterable[IPAddress], identities: Mapping[IPAddress, int] | None = None) -> None:
        """Other nodes' addresses: they carry the `remote-node` identity, or
        the one `identities` gives (a node identity by labels)."""
        new = frozenset(ips)
        ids = dict(identities or {})
        if new != self.remote_node_ips or ids != self._node_ids:
            self.remote_node_ips = new
            self._node_ids = ids
            self._rebuild = True

    def add_prefixes(self, nets: Iterable[IPNetwork]) -> list[tuple[IPNetwork, int]]:
        """Count a policy's prefixes in; returns those that got an identity now."""
        out = []
        for net in nets:
            if net.prefixlen == 0:
                continue  # a default route is a world identity, never a CIDR one
            self._cidr_refs[net] = self._cidr_refs.get(net, 0) + 1
            if net not in self.cidr_ids:
                ident = self.cidr_ids[net] = self._identities.for_cidr(net)
                out.append((net, ident))
        if out:
            self._prefixes_moved()
        return out

    def remove_prefixes(self, nets: Iterable[IPNetwork]) -> list[tuple[IPNetwork, int]]:
        """Count a policy's prefixes out; returns those no policy names now."""
        out = []
        for net in nets:
            n = self._cidr_refs.get(net)
            if n is None:
                continue
            if n > 1:
                self._cidr_refs[net] = n - 1
                continue
            del self._cidr_refs[net]
            ident = self.cidr_ids.pop(net, None)
            if ident is not None:
                self._released.add(net)
                out.append((net, ident))
        if out:
            self._prefixes_moved()
        return out

    def _prefixes_moved(self) -> None:
        self._rebuild = True
        self._cidr_labels = None

    def release_unused(self) -> None:
        """Forget the identities of prefixes no policy names any more."""
        if not self._released:
            return
        gone = [n for n in self._released if n not in self.cidr_ids]
        self._released.clear()
        self._identities.release_cidrs(gone)
        # Every prefix held here came from the allocator, so a larger
        # allocator still holds prefixes from before a restart that no policy
        # names: one sweep drops them, after which the counts agree.
        if self._identities.cidr_count > len(self.cidr_ids):
            self._identities.release_cidrs_except(self.cidr_ids)

    # ------------------------------------------------------------ outputs

    def _endpoint_identity(self, addr: IPAddress) -> int | None:
        eps = self._ip_eps.get(addr)
        return eps[min(eps)] if eps else None

    def _node_identity(self, addr: IPAddress) -> int | None:
        if addr in self.host_ips:
            return IDENTITY_HOST
        if addr in self.remote_node_ips:
            return self._node_ids.get(addr, IDENTITY_REMOTE_NODE)
        return None

    def table(self, prev: Mapping[IPNetwork, int] | None) -> Mapping[IPNetwork, int]:
        """The table as of now, immutable; `prev` itself when nothing changed
        since it (callers compare with `is`)."""
        if self._rebuild or prev is None:
            out: dict[IPNetwork, int] = self.stack.default_routes()
            out.update(self.cidr_ids)
            for addr in self.remote_node_ips:
                out[host_net(addr)] = self._node_ids.get(addr, IDENTITY_REMOTE_NODE)
            for addr in self.host_ips:
                out[host_net(addr)] = IDENTITY_HOST
            for addr, eps in self._ip_eps.items():
                if eps:
                    out[host_net(addr)] = eps[min(eps)]
            if prev is not None and len(prev) == len(out) and all(prev.get(n) == i for n, i in out.items()):
                self._table = prev if isinstance(prev, immutables.Map) else immutables.Map(prev)
                self.last_changes = frozenset()
            else:
                self._table = immutables.Map(out)
                self.last_changes = None
            self._by_ident = _index(self._table)
        elif self._dirty_addrs:
            table, index = self._table.mutate(), self._by_ident.mutate()
            moved: set[IPNetwork] = set()
            for addr in self._dirty_addrs:
                net = host_net(addr)
                ident = self._endpoint_identity(addr)
                if ident is None:
                    ident = self._node_identity(addr)
                if ident is None:
                    ident = self.cidr_ids.get(net)
                old = table.get(net)
                if old == ident:
                    continue
                moved.add(net)
                if old is not None:
                    rest = index[old] - {net}
                    if rest:
                        index[old] = rest
                    else:
                        del index[old]
                if ident is None:
                    del table[net]
                else:
                    table[net] = ident
                    index[ident] = index.get(ident, frozenset()) | {net}
            if moved:
                self._table, self._by_ident = table.finish(), index.finish()
            self.last_changes = frozenset(moved)
        else:
            self._rebuild = False
            self.last_changes = frozenset()
            return prev
        self._rebuild = False
        self._dirty_addrs.clear()
        if prev is not None and self._table is prev:
            return prev
        return self._table

    def by_identity(self) -> Mapping[int, frozenset[IPNetwork]]:
        """Identity -> its prefixes in the last table() (immutable)."""
        return self._by_ident

    def cidr_labels(self) -> dict[int, frozenset[str]]:
        """CIDR identity -> labels: every policy prefix containing its prefix,
        so the longest-prefix match still finds the allows of enclosing CIDRs,
        and the world label of its family in this stack."""
        if self._cidr_labels is None:
            prefixes = PrefixMap(self.cidr_ids)
            self._cidr_labels = {
                ident: frozenset({self.stack.world_label(net.version), *(f"cidr:{outer}" for outer in prefixes.covering(net))})
                for net, ident in self.cidr_ids.items()
            }
        return self._cidr_labels


def _index(table: Mapping[IPNetwork, int]) -> immutables.Map:
    by_ident: dict[int, set[IPNetwork]] = {}
    for net, ident in table.items():
        by_ident.setdefault(ident, set()).add(net)
    return immutables.Map({i: frozenset(v) for i, v in by_ident.items()})
