"""The compiler: (policies, endpoints, identities) -> CompiledState, incrementally.

Policy is computed per identity (endpoints sharing labels share it; within
one compile, identities selected by the same specs share one merge) and then
stamped per endpoint with proxy ports. Selectors are resolved once each in a
selector cache indexed by label (key, value); a policy change re-merges only
the identities it selected before or after; an endpoint change that only
adds or removes a peer patches that peer's entries in the identities whose
rules name it (a full re-merge when L7 is involved). Pure: no I/O.

Entities: `all` is identity 0; `world` is identity 2 plus every CIDR
identity; `cluster` is every local label identity plus host, remote-node,
init, health, unmanaged, kube-apiserver and ingress. CIDR peers select the
CIDR identities of the policy prefixes inside them (minus `except`), and
0.0.0.0/0 also selects world. Endpoint and host /32s take precedence in the
ipcache, so CIDR rules never select local endpoints (as in Cilium).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from policy.compiled import (
    ALL_PORTS,
    IDENTITY_ANY,
    IDENTITY_HOST,
    IDENTITY_WORLD,
    RESERVED_IDENTITIES,
    CompiledState,
    Direction,
    EndpointPolicy,
    L7PeerRule,
    L7Policy,
    PolicyEntry,
    Protocol,
    RedirectKey,
    RuleRef,
    Verdict,
)
from policy.endpoint import Endpoint, identity_labels, selectable_labels
from policy.identity import RESERVED_BY_NAME, IdentityAllocator, ProxyPortAllocator
from policy.merge import Atoms, merge_entries, merge_l7
from policy.model import AnyPeer, CIDRPeer, EndpointPeer, EntityPeer, Peer, Policy, PolicySpec, PortRule, PortSpec
from policy.selector import SelectorIndex

WORLD_NET = IPv4Network("0.0.0.0/0")
_L3_ONLY = (PortRule((PortSpec(Protocol.ANY, ALL_PORTS),)),)
_CLUSTER_RESERVED = frozenset(i for i in RESERVED_IDENTITIES if i != IDENTITY_WORLD)
_HOST_ONLY = frozenset({IDENTITY_HOST})
ALLOW_LOCALHOST_REF = RuleRef("reserved", "allow-localhost", "ingress from the node (allow_localhost)")


@dataclass(frozen=True)
class IdentityPolicy:
    """Resolved policy of one identity, before per-endpoint proxy ports."""

    ingress_enforced: bool
    egress_enforced: bool
    entries: tuple[PolicyEntry, ...]
    l7: dict[tuple[Direction, int], tuple[L7PeerRule, ...]]
    selected_by: frozenset[str]
    policy_keys: frozenset[str]


_UNSELECTED = IdentityPolicy(False, False, (), {}, frozenset(), frozenset())


def _within(net: IPv4Network, outer: IPv4Network) -> bool:
    """net is inside outer (ipaddress.subnet_of, without its overhead)."""
    shift = 32 - outer.prefixlen
    return net.prefixlen >= outer.prefixlen and (
        int(net.network_address) >> shift == int(outer.network_address) >> shift
    )


def _cidr_selects(peer: CIDRPeer, net: IPv4Network) -> bool:
    return _within(net, peer.net) and not any(_within(net, e) for e in peer.excepts)


def _entry_order(e: PolicyEntry) -> tuple[int, int, int, int]:
    k = e.key
    return (k.identity, k.direction, k.protocol, k.ports.lo)


def _depends_on_labels(peer: Peer) -> bool:
    return isinstance(peer, EndpointPeer) or (isinstance(peer, EntityPeer) and peer.name == "cluster")


def _depends_on_cidrs(peer: Peer) -> bool:
    return isinstance(peer, CIDRPeer) or (isinstance(peer, EntityPeer) and peer.name == "world")


class Compiler:
    def __init__(
        self,
        identities: IdentityAllocator | None = None,
        proxy_ports: ProxyPortAllocator | None = None,
        host_ips: Iterable[IPv4Address] = (),
        allow_localhost: bool = True,
    ) -> None:
        self.identities = identities if identities is not None else IdentityAllocator()
        # As Cilium's allow-localhost default: the node itself may always
        # reach its local endpoints, or kubelet probes and node-local health
        # checks would break the moment a pod's ingress becomes enforced.
        self.allow_localhost = allow_localhost
        self.proxy_ports = proxy_ports if proxy_ports is not None else ProxyPortAllocator()
        self.host_ips = frozenset(host_ips)
        self._policies: dict[str, Policy] = {}
        self._endpoints: dict[int, Endpoint] = {}
        self._ep_identity: dict[int, int] = {}
        self._identity_eps: dict[int, set[int]] = {}
        self._index = SelectorIndex()
        # Selector cache: peer -> members, users (policy keys), and an index
        # of label-dependent selectors by one (key, value) they require.
        self._members: dict[Peer, frozenset[int]] = {}
        self._users: dict[Peer, set[str]] = {}
        self._sel_by_kv: dict[tuple[str, str], set[Peer]] = defaultdict(set)
        self._sel_unindexed: set[Peer] = set()
        self._cidr_sels: set[Peer] = set()
        # `world` entity selectors: every CIDR identity is theirs.
        self._world_sels: set[Peer] = set()
        # CIDR selectors by their prefix, so a new prefix finds the selectors
        # containing it through its <= 33 supernets instead of a scan.
        self._cidr_sel_by_net: dict[tuple[int, int], set[CIDRPeer]] = defaultdict(set)
        # How many CIDR selectors have each prefix length: supernets of a
        # length no selector has are not looked up at all.
        self._cidr_sel_lens: dict[int, int] = defaultdict(int)
        # Per policy: its RuleRef name and (subject selector, spec) pairs.
        self._meta: dict[str, tuple[str, tuple[tuple[EndpointPeer, PolicySpec], ...]]] = {}
        self._cidr_refs: dict[IPv4Network, int] = defaultdict(int)
        self._cidr_ids: dict[IPv4Network, int] = {}
        # Prefixes no policy names any more; their identities are released
        # once, in compile(), so a policy updated in place (unregister, then
        # register) keeps its CIDR identities.
        self._released_cidrs: set[IPv4Network] = set()
        # policy key -> identities it selects; identity -> policy keys
        self._subjects: dict[str, frozenset[int]] = {}
        self._id_policies: dict[int, set[str]] = defaultdict(set)
        self._id_policy: dict[int, IdentityPolicy] = {}
        self._ep_policy: dict[int, EndpointPolicy] = {}
        self._ep_redirects: dict[int, set[RedirectKey]] = {}
        # Selectors whose membership changed since the last compile; their
        # users' subjects are recomputed once, in compile().
        self._stale_sels: dict[Peer, set[int]] = {}
        # Identity -> peers whose membership changed while its specs did not:
        # compile() patches just those peers' entries instead of re-merging.
        self._peer_dirty: dict[int, set[int]] = {}
        self._dirty_ids: set[int] = set()
        self._dirty_eps: set[int] = set()
        self._removed_eps: set[int] = set()
        # The ipcache is patched per endpoint address; a CIDR or host change
        # rebuilds it (rare, and cheap next to a policy merge).
        self._ipcache_dirty = True
        self._ipcache: dict[IPv4Network, int] = {}
        self._ip_eps: dict[IPv4Address, set[int]] = defaultdict(set)
        self._dirty_addrs: set[IPv4Address] = set()
        self._labels_dirty = True
        self._cidr_labels_dirty = True
        self._label_view: dict[int, frozenset[str]] = {}
        self._cidr_label_view: dict[int, frozenset[str]] = {}
        self._revision = 0
        self._state: CompiledState | None = None
        self._changed: frozenset[int] = frozenset()

    # ------------------------------------------------------------ inputs

    def upsert_policy(self, policy: Policy) -> None:
        old = self._policies.get(policy.key)
        if old == policy:
            return
        if old is not None:
            self._unregister(old)
        self._policies[policy.key] = policy
        self._register(policy)

    def delete_policy(self, key: str) -> None:
        old = self._policies.pop(key, None)
        if old is not None:
            self._unregister(old)
            del self._meta[key]

    def upsert_endpoint(self, ep: Endpoint) -> None:
        old = self._endpoints.get(ep.id)
        if old == ep:
            return
        ident = self.identities.for_label_set(identity_labels(ep.labels))
        old_ident = self._ep_identity.get(ep.id)
        self._endpoints[ep.id] = ep
        self._removed_eps.discard(ep.id)
        if old_ident != ident:
            if ep.ipv4 is not None:
                self._dirty_addrs.add(ep.ipv4)  # its /32 maps to the new identity
            if old_ident is not None:
                self._detach(ep.id, old_ident)
            self._ep_identity[ep.id] = ident
            eps = self._identity_eps.setdefault(ident, set())
            eps.add(ep.id)
            if len(eps) == 1:
                self._identity_added(ident)
        if old is None or old.ipv4 != ep.ipv4:
            if old is not None and old.ipv4 is not None:
                self._ip_eps[old.ipv4].discard(ep.id)
                self._dirty_addrs.add(old.ipv4)
            if ep.ipv4 is not None:
                self._ip_eps[ep.ipv4].add(ep.id)
                self._dirty_addrs.add(ep.ipv4)
        self._dirty_eps.add(ep.id)

    def delete_endpoint(self, endpoint_id: int) -> None:
        ep = self._endpoints.pop(endpoint_id, None)
        if ep is None:
            return
        self._detach(endpoint_id, self._ep_identity.pop(endpoint_id))
        self._dirty_eps.discard(endpoint_id)
        self._removed_eps.add(endpoint_id)
        if ep.ipv4 is not None:
            self._ip_eps[ep.ipv4].discard(endpoint_id)
            self._dirty_addrs.add(ep.ipv4)

    def set_host_ips(self, host_ips: Iterable[IPv4Address]) -> None:
        new = frozenset(host_ips)
        if new != self.host_ips:
            self.host_ips = new
            self._ipcache_dirty = True

    # ------------------------------------------------------------ queries

    @property
    def policies(self) -> dict[str, Policy]:
        return dict(self._policies)

    def identity_of_endpoint(self, endpoint_id: int) -> int | None:
        return self._ep_identity.get(endpoint_id)

    def endpoints_of_policy(self, key: str) -> frozenset[int]:
        """Endpoints the policy selects (it contributes to their EndpointPolicy)."""
        out: set[int] = set()
        for ident in self._subjects.get(key, ()):
            out |= self._identity_eps.get(ident, set())
        return frozenset(out)

    def redirect_keys(self) -> frozenset[RedirectKey]:
        """Every redirect of the last compile. After a restart, once all
        endpoints are restored, `proxy_ports.retain(c.redirect_keys())` frees
        ports persisted for redirects that no longer exist."""
        out: set[RedirectKey] = set()
        for keys in self._ep_redirects.values():
            out |= keys
        return frozenset(out)

    @property
    def state(self) -> CompiledState | None:
        """The last compiled state (None before the first compile)."""
        return self._state

    def changed_endpoints(self) -> frozenset[int]:
        """Endpoint ids whose EndpointPolicy differs from the previous compile
        (including endpoints that were deleted)."""
        return self._changed

    # ------------------------------------------------------------ selector cache

    def _resolve(self, peer: Peer) -> frozenset[int]:
        if isinstance(peer, EndpointPeer):
            return self._index.resolve(peer.selector)
        if isinstance(peer, AnyPeer):
            return frozenset({IDENTITY_ANY})
        if isinstance(peer, EntityPeer):
            if peer.name == "world":
                return frozenset({IDENTITY_WORLD, *self._cidr_ids.values()})
            if peer.name == "cluster":
                return self._index.all() | _CLUSTER_RESERVED
            return frozenset({RESERVED_BY_NAME[peer.name]})
        assert isinstance(peer, CIDRPeer)
        out = {ident for net, ident in self._cidr_ids.items() if _cidr_selects(peer, net)}
        if peer.net.prefixlen == 0:
            out.add(IDENTITY_WORLD)
        return frozenset(out)

    def _add_selector(self, peer: Peer, key: str) -> None:
        users = self._users.get(peer)
        if users is None:
            self._users[peer] = {key}
            self._members[peer] = self._resolve(peer)
            if isinstance(peer, EndpointPeer):
                kv = next(((r.key, r.values[0]) for r in peer.selector.requirements if r.op == "In" and len(r.values) == 1), None)
                if kv is None:
                    self._sel_unindexed.add(peer)
                else:
                    self._sel_by_kv[kv].add(peer)
            elif _depends_on_labels(peer):
                self._sel_unindexed.add(peer)
            if _depends_on_cidrs(peer):
                self._cidr_sels.add(peer)
                if isinstance(peer, EntityPeer):
                    self._world_sels.add(peer)
                if isinstance(peer, CIDRPeer):
                    self._cidr_sel_by_net[(int(peer.net.network_address), peer.net.prefixlen)].add(peer)
                    self._cidr_sel_lens[peer.net.prefixlen] += 1
        else:
            users.add(key)

    def _drop_selector(self, peer: Peer, key: str) -> None:
        users = self._users.get(peer)
        if users is None:
            return
        users.discard(key)
        if users:
            return
        del self._users[peer]
        del self._members[peer]
        self._sel_unindexed.discard(peer)
        self._cidr_sels.discard(peer)
        self._world_sels.discard(peer)
        if isinstance(peer, CIDRPeer):
            by_net = self._cidr_sel_by_net[(int(peer.net.network_address), peer.net.prefixlen)]
            by_net.discard(peer)
            if not by_net:
                del self._cidr_sel_by_net[(int(peer.net.network_address), peer.net.prefixlen)]
            self._cidr_sel_lens[peer.net.prefixlen] -= 1
            if self._cidr_sel_lens[peer.net.prefixlen] <= 0:
                del self._cidr_sel_lens[peer.net.prefixlen]
        if isinstance(peer, EndpointPeer):
            for r in peer.selector.requirements:
                if r.op == "In" and len(r.values) == 1:
                    self._sel_by_kv[(r.key, r.values[0])].discard(peer)
                    break

    @staticmethod
    def _selectors_of(policy: Policy) -> set[Peer]:
        out: set[Peer] = set()
        for spec in policy.specs:
            out.add(EndpointPeer(spec.subject))
            for rule in spec.rules:
                out.update(rule.peers)
        return out

    def _subjects_of(self, policy: Policy) -> frozenset[int]:
        out: set[int] = set()
        for subject, _ in self._meta[policy.key][1]:
            out |= self._members[subject]
        return frozenset(out)

    def _set_subjects(self, key: str, new: frozenset[int]) -> None:
        old = self._subjects.get(key, frozenset())
        for ident in old - new:
            self._id_policies[ident].discard(key)
        for ident in new - old:
            self._id_policies[ident].add(key)
        if new:
            self._subjects[key] = new
        else:
            self._subjects.pop(key, None)
        self._dirty_ids |= old | new

    def _register(self, policy: Policy) -> None:
        self._meta[policy.key] = (policy.ref_name, tuple((EndpointPeer(spec.subject), spec) for spec in policy.specs))
        for peer in self._selectors_of(policy):
            self._add_selector(peer, policy.key)
        self._retarget_cidrs(policy.cidrs(), +1)
        self._set_subjects(policy.key, self._subjects_of(policy))

    def _unregister(self, policy: Policy) -> None:
        self._set_subjects(policy.key, frozenset())
        for peer in self._selectors_of(policy):
            self._drop_selector(peer, policy.key)
        self._retarget_cidrs(policy.cidrs(), -1)

    def _touch_users(self, peer: Peer, ident: int) -> None:
        """A selector gained or lost `ident`: its users must re-merge (in compile)."""
        self._stale_sels.setdefault(peer, set()).add(ident)

    def _flush_stale(self) -> None:
        resubject: set[str] = set()
        for peer, changed in self._stale_sels.items():
            for key in self._users.get(peer, ()):
                meta = self._meta.get(key)
                if meta is None:
                    continue
                if any(subject == peer for subject, _ in meta[1]):
                    resubject.add(key)
                else:
                    # Only its peers changed: the same subjects get those peers patched.
                    for ident in self._subjects.get(key, ()):
                        self._peer_dirty.setdefault(ident, set()).update(changed)
        self._stale_sels.clear()
        for key in resubject:
            policy = self._policies.get(key)
            if policy is not None:
                self._set_subjects(key, self._subjects_of(policy))

    def _retarget_cidrs(self, nets: set[IPv4Network], delta: int) -> None:
        """Count a policy's prefixes in (+1) or out (-1).

        Work is linear in len(nets): each prefix that comes or goes finds its
        selectors through its <= 33 supernets, and each affected selector's
        member set is rebuilt once per call, not once per prefix.
        """
        hits: dict[Peer, set[int]] = {}
        moved = False
        for net in nets:
            if net == WORLD_NET:
                continue
            n = self._cidr_refs[net] + delta
            if n <= 0:
                del self._cidr_refs[net]
                ident = self._cidr_ids.pop(net, None)
                if ident is not None:
                    moved = True
                    self._released_cidrs.add(net)
                    self._collect_cidr_selectors(net, ident, hits)
            else:
                self._cidr_refs[net] = n
                if net not in self._cidr_ids:
                    ident = self._cidr_ids[net] = self.identities.for_cidr(net)
                    moved = True
                    self._collect_cidr_selectors(net, ident, hits)
        if not moved:
            return
        self._ipcache_dirty = self._labels_dirty = self._cidr_labels_dirty = True
        for peer, idents in hits.items():
            members = self._members[peer]
            self._members[peer] = (members | idents) if delta > 0 else (members - idents)
            self._stale_sels.setdefault(peer, set()).update(idents)  # as _touch_users, in bulk

    def _collect_cidr_selectors(self, net: IPv4Network, ident: int, hits: dict[Peer, set[int]]) -> None:
        """One prefix came or went: note it for every selector it falls in."""
        for peer in self._world_sels:
            hits.setdefault(peer, set()).add(ident)
        addr = int(net.network_address)
        for plen in self._cidr_sel_lens:
            if plen > net.prefixlen:
                continue
            shift = 32 - plen
            for peer in self._cidr_sel_by_net.get(((addr >> shift) << shift, plen), ()):
                if _cidr_selects(peer, net):
                    hits.setdefault(peer, set()).add(ident)

    def _release_cidr_identities(self) -> None:
        """Forget the identities of prefixes no policy names any more."""
        if not self._released_cidrs:
            return
        gone = [n for n in self._released_cidrs if n not in self._cidr_ids]
        self._released_cidrs.clear()
        self.identities.release_cidrs(gone)
        # Every prefix the compiler holds came from the allocator, so a larger
        # allocator still holds prefixes from before a restart that no policy
        # names: one sweep drops them, after which the counts agree.
        if self.identities.cidr_count > len(self._cidr_ids):
            self.identities.release_cidrs_except(self._cidr_ids)

    def _label_candidates(self, labels: dict[str, str] | Mapping[str, str]) -> set[Peer]:
        """Label-dependent selectors that may select an identity with these labels."""
        candidates: set[Peer] = set(self._sel_unindexed)
        for kv in labels.items():
            candidates |= self._sel_by_kv.get(kv, set())
        return candidates

    def _identity_added(self, ident: int) -> None:
        labels = selectable_labels(self.identities.labels_of(ident))
        self._index.add(ident, labels)
        self._label_view[ident] = self.identities.labels_of(ident)
        self._labels_dirty = True
        for peer in self._label_candidates(labels):
            if isinstance(peer, EndpointPeer) and not peer.selector.matches(labels):
                continue
            self._members[peer] = self._members[peer] | {ident}
            self._touch_users(peer, ident)
        self._dirty_ids.add(ident)

    def _detach(self, endpoint_id: int, ident: int) -> None:
        eps = self._identity_eps.get(ident)
        if eps is None:
            return
        eps.discard(endpoint_id)
        if eps:
            return
        del self._identity_eps[ident]
        self._label_view.pop(ident, None)
        self._labels_dirty = True
        labels = self._index.labels.get(ident, {})
        self._index.remove(ident)
        for peer in self._label_candidates(labels):
            members = self._members[peer]
            if ident in members:
                self._members[peer] = members - {ident}
                self._touch_users(peer, ident)
        self._id_policy.pop(ident, None)
        self._peer_dirty.pop(ident, None)
        self._dirty_ids.discard(ident)

    # ------------------------------------------------------------ merge

    def _selecting_specs(self, ident: int) -> tuple[tuple[str, int], ...]:
        """(policy key, spec index) of every spec selecting the identity."""
        keys = self._id_policies.get(ident)
        if not keys:
            return ()
        members = self._members
        out: list[tuple[str, int]] = []
        for key in sorted(keys):
            specs = self._meta[key][1]
            if len(specs) == 1:
                out.append((key, 0))  # the policy selects it, so its only spec does
            else:
                out.extend((key, i) for i, (subject, _) in enumerate(specs) if ident in members[subject])
        return tuple(out)

    def _identity_policy(
        self, ident: int, memo: dict[tuple[tuple[str, int], ...], IdentityPolicy] | None = None
    ) -> IdentityPolicy:
        """An identity's policy depends only on the specs selecting it, so
        identities selected by the same specs share one merge (`memo`)."""
        specs = self._selecting_specs(ident)
        if not specs:
            return _UNSELECTED
        if memo is not None and specs in memo:
            return memo[specs]
        out = self._merge_specs(specs)
        if memo is not None:
            memo[specs] = out
        return out

    def _patch_peers(self, ident: int, ip: IdentityPolicy, peers: set[int]) -> IdentityPolicy | None:
        """Recompute only the entries of `peers` in an identity's policy; None
        when a full merge is needed (L7 involved)."""
        if ip.l7:
            return None
        selecting = self._selecting_specs(ident)
        atoms = Atoms()
        members = self._members
        for key, idx in selecting:
            spec = self._meta[key][1][idx][1]
            for rule in spec.rules:
                hit: set[int] = set()
                for p in rule.peers:
                    hit |= members[p] & peers
                if not hit:
                    continue
                items = atoms.items[frozenset(hit)]
                for pr in rule.port_rules or _L3_ONLY:
                    if pr.http is not None:
                        return None
                    for ps in pr.ports:
                        verdict = Verdict.DENY if rule.deny else Verdict.ALLOW
                        items.append((rule.direction, ps.protocol, ps.ports.lo, ps.ports.hi, verdict, rule.ref))
        kept = [e for e in ip.entries if e.key.identity not in peers]
        entries = tuple(sorted(kept + list(merge_entries(atoms)), key=_entry_order))
        return IdentityPolicy(ip.ingress_enforced, ip.egress_enforced, entries, {}, ip.selected_by, ip.policy_keys)

    def _merge_specs(self, selecting: tuple[tuple[str, int], ...]) -> IdentityPolicy:
        atoms = Atoms()
        ingress = egress = False
        selected_by: set[str] = set()
        members = self._members
        for key, idx in selecting:
            ref_name, specs = self._meta[key]
            spec = specs[idx][1]
            selected_by.add(ref_name)
            ingress |= spec.enforce_ingress
            egress |= spec.enforce_egress
            for rule in spec.rules:
                # One selector: share its member set, so equal peer sets
                # across rules collapse into one key in Atoms.items.
                if len(rule.peers) == 1:
                    fpeers = members[rule.peers[0]]
                else:
                    fpeers = frozenset().union(*(members[p] for p in rule.peers))
                if not fpeers:
                    continue
                items = atoms.items[fpeers]
                for pr in rule.port_rules or _L3_ONLY:
                    for ps in pr.ports:
                        if pr.http is not None:
                            proto, verdict = Protocol.TCP, Verdict.REDIRECT
                            for http in pr.http:
                                atoms.l7[(rule.direction, ps.ports.lo)].append((fpeers, http, rule.ref))
                        else:
                            proto = ps.protocol
                            verdict = Verdict.DENY if rule.deny else Verdict.ALLOW
                        items.append((rule.direction, proto, ps.ports.lo, ps.ports.hi, verdict, rule.ref))
        if ingress and self.allow_localhost:
            # Merged like any rule, so an explicit deny of the host still wins.
            atoms.items[_HOST_ONLY].append(
                (Direction.INGRESS, Protocol.ANY, 0, 65535, Verdict.ALLOW, ALLOW_LOCALHOST_REF)
            )
        keys = frozenset(key for key, _ in selecting)
        return IdentityPolicy(ingress, egress, merge_entries(atoms), merge_l7(atoms), frozenset(selected_by), keys)

    def _endpoint_policy(self, ep: Endpoint, ident: int, ip: IdentityPolicy) -> tuple[EndpointPolicy, set[RedirectKey]]:
        if not ip.l7:
            return (
                EndpointPolicy(ep.id, ident, ep.ipv4, ip.ingress_enforced, ip.egress_enforced, ip.entries, (), ip.selected_by),
                set(),
            )
        ports: dict[tuple[Direction, int], int] = {}
        keys: set[RedirectKey] = set()
        for direction, port in sorted(ip.l7):
            rk = RedirectKey(ep.id, direction, port)
            ports[(direction, port)] = self.proxy_ports.allocate(rk)
            keys.add(rk)
        entries = tuple(
            PolicyEntry(e.key, e.verdict, ports[(e.key.direction, e.key.ports.lo)], e.rules)
            if e.verdict == Verdict.REDIRECT
            else e
            for e in ip.entries
        )
        l7 = tuple(
            L7Policy(RedirectKey(ep.id, d, p), ports[(d, p)], rules) for (d, p), rules in sorted(ip.l7.items())
        )
        return (
            EndpointPolicy(ep.id, ident, ep.ipv4, ip.ingress_enforced, ip.egress_enforced, entries, l7, ip.selected_by),
            keys,
        )

    # ------------------------------------------------------------ compile

    def compile(self) -> CompiledState:
        if self._state is not None and not (self._stale_sels or self._dirty_ids or self._dirty_eps or self._removed_eps or self._ipcache_dirty or self._dirty_addrs):
            self._changed = frozenset()
            return self._state
        self._release_cidr_identities()
        self._flush_stale()
        rebuild_eps = set(self._dirty_eps)
        memo: dict[tuple[tuple[str, int], ...], IdentityPolicy] = {}
        for ident in self._dirty_ids:
            eps = self._identity_eps.get(ident)
            if not eps:
                continue
            self._id_policy[ident] = self._identity_policy(ident, memo)
            rebuild_eps |= eps
        for ident, peers in self._peer_dirty.items():
            eps = self._identity_eps.get(ident)
            if not eps or ident in self._dirty_ids:
                continue
            old = self._id_policy.get(ident)
            patched = self._patch_peers(ident, old, peers) if old is not None else None
            self._id_policy[ident] = patched if patched is not None else self._identity_policy(ident, memo)
            rebuild_eps |= eps
        # Build everything first, commit after: if proxy ports run out, nothing
        # is half-applied and the next compile retries the same work (ports
        # already handed out are stable per RedirectKey, so a retry reuses them).
        built: dict[int, tuple[EndpointPolicy, set[RedirectKey]]] = {}
        for ep_id in sorted(rebuild_eps):
            ep = self._endpoints.get(ep_id)
            if ep is None:
                continue
            ident = self._ep_identity[ep_id]
            ip = self._id_policy.get(ident)
            if ip is None:
                ip = self._id_policy[ident] = self._identity_policy(ident)
            built[ep_id] = self._endpoint_policy(ep, ident, ip)
        changed: set[int] = set()
        for ep_id in self._removed_eps:
            if self._ep_policy.pop(ep_id, None) is not None:
                changed.add(ep_id)
            for rk in self._ep_redirects.pop(ep_id, set()):
                self.proxy_ports.release(rk)
        for ep_id, (new, keys) in built.items():
            for rk in self._ep_redirects.get(ep_id, set()) - keys:
                self.proxy_ports.release(rk)
            self._ep_redirects[ep_id] = keys
            if self._ep_policy.get(ep_id) != new:
                self._ep_policy[ep_id] = new
                changed.add(ep_id)
        prev = self._state
        ipcache = self._update_ipcache(prev)
        labels = self._build_identity_labels() if (self._labels_dirty or prev is None) else prev.identity_labels
        self._dirty_ids.clear()
        self._peer_dirty.clear()
        self._dirty_eps.clear()
        self._removed_eps.clear()
        self._ipcache_dirty = self._labels_dirty = False
        self._changed = frozenset(changed)
        if prev is not None and not changed and ipcache == prev.ipcache and labels == prev.identity_labels:
            return prev
        self._revision += 1
        self._state = CompiledState(self._revision, dict(self._ep_policy), ipcache, labels)
        return self._state

    def _update_ipcache(self, prev: CompiledState | None) -> Mapping[IPv4Network, int]:
        """Precedence per prefix: endpoint (lowest id if several) > host > CIDR > world."""
        if self._ipcache_dirty or prev is None:
            out: dict[IPv4Network, int] = {WORLD_NET: IDENTITY_WORLD}
            out.update(self._cidr_ids)
            for addr in self.host_ips:
                out[IPv4Network(addr)] = IDENTITY_HOST
            for addr, eps in self._ip_eps.items():
                if eps:
                    out[IPv4Network(addr)] = self._ep_identity[min(eps)]
            self._ipcache = out
        elif self._dirty_addrs:
            for addr in self._dirty_addrs:
                net = IPv4Network(addr)
                eps = self._ip_eps.get(addr)
                if eps:
                    ident: int | None = self._ep_identity[min(eps)]
                elif addr in self.host_ips:
                    ident = IDENTITY_HOST
                else:
                    ident = self._cidr_ids.get(net)
                if ident is None:
                    self._ipcache.pop(net, None)
                else:
                    self._ipcache[net] = ident
        else:
            return prev.ipcache
        self._dirty_addrs.clear()
        return dict(self._ipcache)

    def _build_identity_labels(self) -> dict[int, frozenset[str]]:
        if self._cidr_labels_dirty:
            self._cidr_label_view = self._build_cidr_labels()
            self._cidr_labels_dirty = False
        out: dict[int, frozenset[str]] = {i: frozenset({f"reserved:{n}"}) for i, n in RESERVED_IDENTITIES.items()}
        out.update(self._label_view)
        out.update(self._cidr_label_view)
        return out

    def _build_cidr_labels(self) -> dict[int, frozenset[str]]:
        out: dict[int, frozenset[str]] = {}
        # A CIDR identity carries every policy prefix containing it, so the
        # longest-prefix match still finds the allows of enclosing CIDRs.
        present = {(int(n.network_address), n.prefixlen): n for n in self._cidr_ids}
        lens = sorted({n.prefixlen for n in self._cidr_ids})
        for net, ident in self._cidr_ids.items():
            addr = int(net.network_address)
            labels = {"reserved:world"}
            for plen in lens:
                if plen > net.prefixlen:
                    break
                shift = 32 - plen
                outer = present.get(((addr >> shift) << shift, plen))
                if outer is not None:
                    labels.add(f"cidr:{outer}")
            out[ident] = frozenset(labels)
        return out


def compile_state(
    policies: Iterable[Policy],
    endpoints: Iterable[Endpoint],
    identities: IdentityAllocator | None = None,
    proxy_ports: ProxyPortAllocator | None = None,
    host_ips: Iterable[IPv4Address] = (),
    allow_localhost: bool = True,
) -> CompiledState:
    """One-shot compile of a complete input (a fresh Compiler underneath)."""
    c = Compiler(identities, proxy_ports, host_ips, allow_localhost)
    for p in policies:
        c.upsert_policy(p)
    for ep in endpoints:
        c.upsert_endpoint(ep)
    return c.compile()
