"""The ipcache: which identity an address has. One home for prefix -> identity.

`PrefixMap` reads one table (CompiledState.ipcache) the way the kernel's
LPM trie does, and answers the questions the compiler, `trace` and the xDS
renderer ask of it: the identity of an address (longest-prefix match), the
table's prefixes containing a prefix, and an identity's address space (its
prefixes minus the more specific prefixes of other identities).

`IPCache` keeps the table incrementally for the compiler. Precedence per
prefix: endpoint (lowest endpoint id if several share an address) > host >
CIDR identity > world at 0.0.0.0/0, so CIDR rules never select local
endpoints (as in Cilium). CIDR identities are counted per policy that names
the prefix, allocated on first use and released once no policy names them.
Pure, no I/O.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network

from policy.identity import IDENTITY_HOST, IDENTITY_REMOTE_NODE, IDENTITY_WORLD, IdentityAllocator

# The owner key of another node's endpoint in IPCache._ip_eps: larger than
# any local endpoint id, so a local endpoint on the same address wins.
REMOTE_OWNER = 1 << 62

WORLD_NET = IPv4Network("0.0.0.0/0")


class PrefixMap:
    """A read-only view of prefix -> identity, indexed for longest-prefix match."""

    def __init__(self, table: Mapping[IPv4Network, int]) -> None:
        self.table = table
        # prefix length -> {network address as int: identity}: a lookup is at
        # most one dict probe per prefix length present (<= 33).
        self._by_len: dict[int, dict[int, int]] = {}
        for net, ident in table.items():
            self._by_len.setdefault(net.prefixlen, {})[int(net.network_address)] = ident
        self._longest_first = sorted(self._by_len, reverse=True)
        self._nets: dict[tuple[int, int], IPv4Network] | None = None
        self._sorted: list[tuple[int, int, IPv4Network]] | None = None
        self._by_ident: dict[int, list[IPv4Network]] | None = None

    def lookup(self, addr: IPv4Address) -> int:
        """The identity of an address: longest-prefix match, world if none."""
        a = int(addr)
        for plen in self._longest_first:
            shift = 32 - plen
            ident = self._by_len[plen].get((a >> shift) << shift)
            if ident is not None:
                return ident
        return IDENTITY_WORLD

    def covering(self, net: IPv4Network) -> list[IPv4Network]:
        """The table's prefixes containing `net` (itself included), shortest first."""
        if self._nets is None:
            self._nets = {(int(n.network_address), n.prefixlen): n for n in self.table}
        addr = int(net.network_address)
        out = []
        for plen in reversed(self._longest_first):
            if plen > net.prefixlen:
                break
            shift = 32 - plen
            outer = self._nets.get(((addr >> shift) << shift, plen))
            if outer is not None:
                out.append(outer)
        return out

    def inside(self, net: IPv4Network) -> list[IPv4Network]:
        """The table's prefixes strictly inside `net`, in address order."""
        if self._sorted is None:
            self._sorted = sorted((int(n.network_address), n.prefixlen, n) for n in self.table)
        lo = int(net.network_address)
        hi = int(net.broadcast_address)
        i = bisect_left(self._sorted, (lo, -1))
        j = bisect_right(self._sorted, (hi, 33))
        return [n for _, plen, n in self._sorted[i:j] if plen > net.prefixlen]

    def address_space(self, ident: int) -> list[tuple[IPv4Network, list[IPv4Network]]]:
        """Where `ident` is the longest match: each of its prefixes, with the
        more specific prefixes of other identities carved out of it."""
        if self._by_ident is None:
            by_ident: dict[int, list[IPv4Network]] = {}
            for net, i in self.table.items():
                by_ident.setdefault(i, []).append(net)
            self._by_ident = {i: sorted(v) for i, v in by_ident.items()}
        return [
            (net, sorted(q for q in self.inside(net) if self.table[q] != ident))
            for net in self._by_ident.get(ident, ())
        ]


class IPCache:
    """The compiler's ipcache, patched per address as endpoints come and go."""

    def __init__(self, identities: IdentityAllocator, host_ips: Iterable[IPv4Address] = ()) -> None:
        self._identities = identities
        self.host_ips: frozenset[IPv4Address] = frozenset(host_ips)
        # address -> {endpoint id: its identity}
        self._ip_eps: dict[IPv4Address, dict[int, int]] = {}
        # policy prefixes: how many policies name each, and their identities
        self._cidr_refs: dict[IPv4Network, int] = {}
        self.cidr_ids: dict[IPv4Network, int] = {}
        # Prefixes no policy names any more; their identities are released
        # once, in release_unused(), so a policy updated in place (unregister,
        # then register) keeps its CIDR identities.
        self._released: set[IPv4Network] = set()
        # A CIDR or host change rebuilds the table (rare, and cheap next to a
        # policy merge); an endpoint change patches its address.
        self._rebuild = True
        self._dirty_addrs: set[IPv4Address] = set()
        self._table: dict[IPv4Network, int] = {}
        self.remote_node_ips: frozenset[IPv4Address] = frozenset()
        self._cidr_labels: dict[int, frozenset[str]] | None = None

    @property
    def dirty(self) -> bool:
        return self._rebuild or bool(self._dirty_addrs)

    # ------------------------------------------------------------ inputs

    def upsert_endpoint(self, endpoint_id: int, old: IPv4Address | None, new: IPv4Address | None, ident: int) -> None:
        if old is not None and old != new:
            self._ip_eps.get(old, {}).pop(endpoint_id, None)
            self._dirty_addrs.add(old)
        if new is not None:
            eps = self._ip_eps.setdefault(new, {})
            if eps.get(endpoint_id) != ident:
                eps[endpoint_id] = ident
                self._dirty_addrs.add(new)

    def delete_endpoint(self, endpoint_id: int, addr: IPv4Address | None) -> None:
        if addr is not None:
            self._ip_eps.get(addr, {}).pop(endpoint_id, None)
            self._dirty_addrs.add(addr)

    def set_host_ips(self, host_ips: Iterable[IPv4Address]) -> None:
        new = frozenset(host_ips)
        if new != self.host_ips:
            self.host_ips = new
            self._rebuild = True

    def set_remote_node_ips(self, ips: Iterable[IPv4Address]) -> None:
        """Other nodes' addresses: they carry the `remote-node` identity."""
        new = frozenset(ips)
        if new != self.remote_node_ips:
            self.remote_node_ips = new
            self._rebuild = True

    def add_prefixes(self, nets: Iterable[IPv4Network]) -> list[tuple[IPv4Network, int]]:
        """Count a policy's prefixes in; returns those that got an identity now."""
        out = []
        for net in nets:
            if net == WORLD_NET:
                continue
            self._cidr_refs[net] = self._cidr_refs.get(net, 0) + 1
            if net not in self.cidr_ids:
                ident = self.cidr_ids[net] = self._identities.for_cidr(net)
                out.append((net, ident))
        if out:
            self._prefixes_moved()
        return out

    def remove_prefixes(self, nets: Iterable[IPv4Network]) -> list[tuple[IPv4Network, int]]:
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

    def _endpoint_identity(self, addr: IPv4Address) -> int | None:
        eps = self._ip_eps.get(addr)
        return eps[min(eps)] if eps else None

    def _node_identity(self, addr: IPv4Address) -> int | None:
        if addr in self.host_ips:
            return IDENTITY_HOST
        if addr in self.remote_node_ips:
            return IDENTITY_REMOTE_NODE
        return None

    def table(self, prev: Mapping[IPv4Network, int] | None) -> Mapping[IPv4Network, int]:
        """The table as of now; `prev` itself when nothing changed since it."""
        if self._rebuild or prev is None:
            out: dict[IPv4Network, int] = {WORLD_NET: IDENTITY_WORLD}
            out.update(self.cidr_ids)
            for addr in self.remote_node_ips:
                out[IPv4Network(addr)] = IDENTITY_REMOTE_NODE
            for addr in self.host_ips:
                out[IPv4Network(addr)] = IDENTITY_HOST
            for addr, eps in self._ip_eps.items():
                if eps:
                    out[IPv4Network(addr)] = eps[min(eps)]
            self._table = out
        elif self._dirty_addrs:
            for addr in self._dirty_addrs:
                net = IPv4Network(addr)
                ident = self._endpoint_identity(addr)
                if ident is None:
                    ident = self._node_identity(addr)
                if ident is None:
                    ident = self.cidr_ids.get(net)
                if ident is None:
                    self._table.pop(net, None)
                else:
                    self._table[net] = ident
        else:
            return prev
        self._rebuild = False
        self._dirty_addrs.clear()
        return dict(self._table)

    def cidr_labels(self) -> dict[int, frozenset[str]]:
        """CIDR identity -> labels: every policy prefix containing its prefix,
        so the longest-prefix match still finds the allows of enclosing CIDRs."""
        if self._cidr_labels is None:
            prefixes = PrefixMap(self.cidr_ids)
            self._cidr_labels = {
                ident: frozenset({"reserved:world", *(f"cidr:{outer}" for outer in prefixes.covering(net))})
                for net, ident in self.cidr_ids.items()
            }
        return self._cidr_labels
