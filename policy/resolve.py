"""Resolve one identity's policy from the specs that select it, then stamp it
per endpoint with proxy ports.

An identity's policy depends only on the specs selecting it and on the
members of the selectors those specs name (policy/selectorcache.py), so the
compiler computes it once per identity (and once per distinct set of
selecting specs) and hands the same value to every endpoint of that
identity; only the proxy ports are per endpoint. Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from policy.compiled import (
    ALL_PORTS,
    HOST_ENDPOINT_ID,
    Direction,
    DNSRule,
    EndpointPolicy,
    L7Kind,
    L7Policy,
    PolicyEntry,
    Protocol,
    RedirectKey,
    RuleRef,
    SNIRule,
    Verdict,
)
from policy.endpoint import Endpoint
from policy.identity import IDENTITY_ANY, IDENTITY_HOST
from policy.merge import Atoms, L7Listener, merge_entries, merge_l7
from policy.model import Peer, PolicySpec, PortRule, PortSpec, Rule
from policy.named_ports import NOTHING, PortsByName
from policy.named_ports import resolve as resolve_name
from policy.proxyports import ProxyPortAllocator

_L3_ONLY = (PortRule((PortSpec(Protocol.ANY, ALL_PORTS),)),)
_HOST_ONLY = frozenset({IDENTITY_HOST})
ALLOW_LOCALHOST_REF = RuleRef("reserved", "allow-localhost", "ingress from the node (allow_localhost)")


@dataclass(frozen=True)
class IdentityPolicy:
    """Resolved policy of one identity, before per-endpoint proxy ports."""

    ingress_enforced: bool
    egress_enforced: bool
    entries: tuple[PolicyEntry, ...]
    l7: dict[tuple[Direction, int], L7Listener]
    selected_by: frozenset[str]
    policy_keys: frozenset[str]


UNSELECTED = IdentityPolicy(False, False, (), {}, frozenset(), frozenset())


def _entry_order(e: PolicyEntry) -> tuple[int, int, int, int]:
    k = e.key
    return (k.identity, k.direction, k.protocol, k.ports.lo)


def _named(
    ps: PortSpec, direction: Direction, fpeers: frozenset[int], subject: PortsByName, peer_ports: Callable[[int], PortsByName],
    named_peers: Callable[[], Iterable[int]],
) -> Iterator[tuple[frozenset[int], PortSpec]]:
    """A named spec as (peers, numbered spec) pairs: ingress names are the
    subject's ports, egress names each peer's (policy/named_ports.py). "Any
    peer" stands for every identity that serves names: a name means a pod's
    port, so a tenant's pod that calls its port 22 `http` opens 22 towards
    itself only, never towards the world for every rule naming `http`."""
    if direction == Direction.INGRESS:
        for spec in resolve_name(ps, subject):
            yield fpeers, spec
        return
    if IDENTITY_ANY in fpeers:
        fpeers = (fpeers - {IDENTITY_ANY}) | frozenset(named_peers())
    groups: dict[tuple[PortSpec, ...], set[int]] = {}
    for peer in fpeers:
        groups.setdefault(resolve_name(ps, peer_ports(peer)), set()).add(peer)
    for specs, peers in groups.items():
        for spec in specs:
            yield frozenset(peers), spec


def merge_specs(
    specs: Sequence[tuple[str, str, PolicySpec]],
    members: Mapping[Peer, frozenset[int]],
    allow_localhost: bool,
    subject_ports: PortsByName = NOTHING,
    peer_ports: Callable[[int], PortsByName] = lambda _: NOTHING,
    named_peers: Callable[[], Iterable[int]] = lambda: (),
) -> IdentityPolicy:
    """(policy key, RuleRef policy name, spec) of every spec selecting an
    identity -> its policy. Named ports resolve against `subject_ports` (the
    identity's own, for ingress) and `peer_ports` (each peer's, for egress)."""
    atoms = Atoms()
    ingress = egress = False
    selected_by: set[str] = set()
    for _, ref_name, spec in specs:
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
            for pr in rule.port_rules or _L3_ONLY:
                for ps in pr.ports:
                    if ps.name is None:
                        _add(atoms, rule, pr, ps, fpeers)
                    else:
                        for peers, spec in _named(ps, rule.direction, fpeers, subject_ports, peer_ports, named_peers):
                            _add(atoms, rule, pr, spec, peers)
    if ingress and allow_localhost:
        # As Cilium's allow-localhost default: the node itself may always
        # reach its local endpoints, or kubelet probes would break the moment
        # a pod's ingress becomes enforced. Merged like any rule, so an
        # explicit deny of the host still wins.
        atoms.items[_HOST_ONLY].append((Direction.INGRESS, Protocol.ANY, 0, 65535, Verdict.ALLOW, ALLOW_LOCALHOST_REF))
    keys = frozenset(key for key, _, _ in specs)
    return IdentityPolicy(ingress, egress, merge_entries(atoms), merge_l7(atoms), frozenset(selected_by), keys)


def _add(atoms: Atoms, rule: Rule, pr: PortRule, ps: PortSpec, fpeers: frozenset[int]) -> None:
    if pr.dns is not None:
        # The DNS proxy takes UDP and TCP alike: the port's own protocol.
        proto, verdict = ps.protocol, Verdict.REDIRECT
        atoms.l7[(rule.direction, ps.ports.lo)].append((fpeers, DNSRule(pr.dns), rule.ref))
    elif pr.l7:
        proto, verdict = Protocol.TCP, Verdict.REDIRECT
        for l7 in pr.http or (SNIRule(pr.server_names or ()),):
            atoms.l7[(rule.direction, ps.ports.lo)].append((fpeers, l7, rule.ref))
    else:
        proto = ps.protocol
        verdict = Verdict.DENY if rule.deny else Verdict.ALLOW
    atoms.items[fpeers].append((rule.direction, proto, ps.ports.lo, ps.ports.hi, verdict, rule.ref))


def patch_peers(
    ip: IdentityPolicy, specs: Iterable[PolicySpec], members: Mapping[Peer, frozenset[int]], peers: set[int]
) -> IdentityPolicy | None:
    """Recompute only the entries of `peers` in an identity's policy (its
    selecting specs unchanged); None when a full merge is needed (L7 or
    named ports involved)."""
    if ip.l7:
        return None
    atoms = Atoms()
    for spec in specs:
        for rule in spec.rules:
            hit: set[int] = set()
            for p in rule.peers:
                hit |= members[p] & peers
            if not hit:
                continue
            items = atoms.items[frozenset(hit)]
            for pr in rule.port_rules or _L3_ONLY:
                if pr.l7:
                    return None
                for ps in pr.ports:
                    if ps.name is not None:
                        return None
                    verdict = Verdict.DENY if rule.deny else Verdict.ALLOW
                    items.append((rule.direction, ps.protocol, ps.ports.lo, ps.ports.hi, verdict, rule.ref))
    kept = [e for e in ip.entries if e.key.identity not in peers]
    entries = tuple(sorted(kept + list(merge_entries(atoms)), key=_entry_order))
    return IdentityPolicy(ip.ingress_enforced, ip.egress_enforced, entries, {}, ip.selected_by, ip.policy_keys)


def host_policy(specs: Sequence[tuple[str, str, PolicySpec]], members: Mapping[Peer, frozenset[int]]) -> EndpointPolicy:
    """The node's own policy (HOST_ENDPOINT_ID) from the host specs selecting
    it. L3/L4 only (the parser refuses L7 in host policies); allow_localhost
    is about the node reaching pods, the node's own ingress is what its
    host policies say."""
    ip = merge_specs(specs, members, allow_localhost=False) if specs else UNSELECTED
    return EndpointPolicy(HOST_ENDPOINT_ID, IDENTITY_HOST, None, ip.ingress_enforced, ip.egress_enforced, ip.entries, (), ip.selected_by)


def redirect_keys(endpoint_id: int, ip: IdentityPolicy) -> set[RedirectKey]:
    """The proxy listeners an endpoint with this identity policy needs."""
    return {RedirectKey(endpoint_id, d, p) for d, p in ip.l7}


def endpoint_policy(
    ep: Endpoint, ident: int, ip: IdentityPolicy, proxy_ports: ProxyPortAllocator
) -> tuple[EndpointPolicy, set[RedirectKey]]:
    """The identity's policy for one endpoint: REDIRECT entries and L7
    listeners get the endpoint's proxy ports. Raises ProxyPortsExhausted."""
    if not ip.l7:
        return (
            EndpointPolicy(ep.id, ident, ep.ipv4, ip.ingress_enforced, ip.egress_enforced, ip.entries, (), ip.selected_by, ipv6=ep.ipv6),
            set(),
        )
    ports: dict[tuple[Direction, int], int] = {}
    keys: set[RedirectKey] = set()
    for direction, port in sorted(ip.l7):
        rk = RedirectKey(ep.id, direction, port)
        if ip.l7[(direction, port)].kind == L7Kind.DNS:
            ports[(direction, port)] = proxy_ports.dns_port  # the one DNS proxy, never allocated
        else:
            ports[(direction, port)] = proxy_ports.allocate(rk)
        keys.add(rk)
    entries = tuple(
        PolicyEntry(e.key, e.verdict, ports[(e.key.direction, e.key.ports.lo)], e.rules)
        if e.verdict == Verdict.REDIRECT
        else e
        for e in ip.entries
    )
    listeners = [L7Policy(RedirectKey(ep.id, d, p), ports[(d, p)], *listener) for (d, p), listener in sorted(ip.l7.items())]
    l7 = tuple(pol for pol in listeners if pol.kind != L7Kind.DNS)
    dns = tuple(pol for pol in listeners if pol.kind == L7Kind.DNS)
    return (
        EndpointPolicy(ep.id, ident, ep.ipv4, ip.ingress_enforced, ip.egress_enforced, entries, l7, ip.selected_by,
                       ipv6=ep.ipv6, dns=dns),
        keys,
    )
