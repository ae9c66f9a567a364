"""`policy diff`: which flows change verdict between two policy sets. Pure.

Both sets are compiled over the same endpoints by one Compiler (old set,
compile, then the new set applied incrementally, compile), so identities and
CIDR identities keep their numbers and the compiler itself says which
endpoints' policy changed. A flow is (source, destination, protocol, port
segment, HTTP rule):

- ends are identities: one per local label identity (its lowest endpoint id
  stands for its replicas, which share one policy), every reserved identity
  (`entity:world`, `entity:host`, ...; of the world identities, those the
  node's stack puts on an address), and one per CIDR cell, a piece of the
  address space whose longest match among the prefixes of either compiled
  ipcache is one prefix, in each family the stack runs (on an IPv4-only
  node IPv6 never reaches a policy, so no IPv6 flow changes verdict); a cell
  whose identity differs between the two states (a prefix only one set
  names) is an end of its own;
- ports are split wherever an entry of either state that applies to the
  pair starts or ends (1-65535 for TCP and UDP; ICMP stands for every
  protocol without ports, looked up at port 0 as the kernel does);
- for flows both states pass at L3/L4 but judge at L7 differently, each
  HTTP or serverNames rule present on one side only (per enforcing side, a non-redirected
  side counting as "any request") is a candidate: a request that changes
  verdict must match one of them. It is reported, with a sample request
  built from it (policy/diff_samples.py), when the sample's verdict differs;
  a candidate whose samples all keep their verdict (its requests are still
  admitted or still refused by other rules) is listed under
  `unchanged_rules`.

Work is limited to what changed: only identities whose endpoints' policy
changed are looked at, within one only the peers whose entries or L7 rules
differ (every peer if the enforcement or the any-peer entries differ), and
each (source, destination) is decided from the entries that name it, with
`compiled.lookup()` and trace's own L7 matching, so a reported verdict is
what `trace` answers. Requests the proxy refuses as malformed (encoded
slashes, 400) are not counted as verdict changes.

The report this returns, and how it reads as JSON and text, is
policy/diff_report.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from policy.compiled import (
    HOST_ENDPOINT_ID,
    ALLOW_ALL_DNS,
    ALLOW_ALL_HTTP,
    ANY_CONNECTION,
    CompiledState,
    Direction,
    DNSRule,
    EndpointPolicy,
    HTTPRule,
    PORTED,
    L7PeerRule,
    PolicyEntry,
    PortRange,
    Protocol,
    SNIRule,
    lookup,
)
from policy.compiler import Compiler
from policy.diff_report import ALLOWED, DENIED, FlowChange, FlowEnd, PolicyDiff, Unchanged, identity_name, rule_text
from policy.diff_samples import rule_samples
from policy.endpoint import Endpoint
from policy.families import IPAddress, IPNetwork, Stack, net_key
from policy.http_path import PathRejected, normalize_path
from policy.identity import IDENTITY_ANY, IDENTITY_HOST, RESERVED_IDENTITIES
from policy.ipcache import PrefixMap
from policy.model import Policy
from policy.trace import DNSQuery, HTTPRequest, TLSHello, http_matches, sni_matches

# One enforcing side's answer for a flow: DENY, ALLOW (no proxy), or the
# HTTP rules (serverNames rules, on an SNI listener) its proxy admits for
# this peer (ORed).
_DENY = "deny"
_ALLOW = "allow"
Side = Any  # _DENY | _ALLOW | frozenset[HTTPRule]


# ------------------------------------------------------------------ compile both sets


def compile_pair(
    old: Iterable[Policy], new: Iterable[Policy], endpoints: Iterable[Endpoint], host_ips: Iterable[IPAddress] = (),
    stack: Stack = Stack.IPV4,
    host_labels: Mapping[str, str] | None = None,
) -> tuple[CompiledState, CompiledState, frozenset[int]]:
    """Both states from one Compiler, and the endpoints whose policy changed;
    with `host_labels` the node is an endpoint too (host policies)."""
    c = Compiler(host_ips=host_ips, stack=stack)
    c.set_host(host_labels)
    for p in old:
        c.upsert_policy(p)
    for ep in endpoints:
        c.upsert_endpoint(ep)
    old_state = c.compile()
    new_list = list(new)
    keep = {p.key for p in new_list}
    for key in [k for k in c.policies if k not in keep]:
        c.delete_policy(key)
    for p in new_list:
        c.upsert_policy(p)
    new_state = c.compile()
    return old_state, new_state, c.changed_endpoints()


def diff_policies(
    old: Iterable[Policy], new: Iterable[Policy], endpoints: Iterable[Endpoint], host_ips: Iterable[IPAddress] = (),
    stack: Stack = Stack.IPV4,
    host_labels: Mapping[str, str] | None = None,
) -> PolicyDiff:
    old_state, new_state, changed = compile_pair(old, new, endpoints, host_ips, stack, host_labels)
    return diff_states(old_state, new_state, changed)


# ------------------------------------------------------------------ per-endpoint index


class _Index:
    """One endpoint's compiled policy by (direction, peer identity)."""

    def __init__(self, ep: EndpointPolicy) -> None:
        self.ep = ep
        self.groups: dict[tuple[Direction, int], list[PolicyEntry]] = {}
        for e in ep.entries:
            self.groups.setdefault((e.key.direction, e.key.identity), []).append(e)
        self.l7: dict[tuple[Direction, int], tuple[L7PeerRule, ...]] = {
            (p.key.direction, p.key.port): p.peer_rules for p in (*ep.l7, *ep.dns)
        }
        self._mini: dict[tuple[Direction, int], EndpointPolicy] = {}

    def relevant(self, d: Direction, peer: int) -> tuple[PolicyEntry, ...]:
        own = self.groups.get((d, peer), ())
        anyp = self.groups.get((d, IDENTITY_ANY), ()) if peer != IDENTITY_ANY else ()
        return (*own, *anyp)

    def side(self, d: Direction, peer: int, protocol: Protocol, port: int) -> Side:
        mini = self._mini.get((d, peer))
        if mini is None:
            # lookup() only reads entries naming this peer or any peer: the
            # same answer as on the whole endpoint, from a handful of entries.
            mini = self._mini[(d, peer)] = replace(self.ep, entries=self.relevant(d, peer), l7=())
        dec = lookup(mini, peer, d, protocol, port)
        if not dec.allowed:
            return _DENY
        if dec.proxy_port:
            rules = self.l7.get((d, port), ())
            return frozenset(_rule(r) for r in rules if peer in r.identities or IDENTITY_ANY in r.identities)
        return _ALLOW


def _norm(entries: Iterable[PolicyEntry]) -> frozenset[tuple[Any, ...]]:
    # Proxy port numbers and provenance do not change a verdict.
    return frozenset((e.key, e.verdict, e.proxy_port != 0) for e in entries)


def _rule(r: L7PeerRule) -> HTTPRule | SNIRule | DNSRule:
    """The rule a peer rule holds: HTTP, serverNames (SNI listener) or DNS."""
    if r.http is not None:
        return r.http
    return r.sni if r.sni is not None else r.dns  # type: ignore[return-value]


def _l7_pairs(rules: Iterable[L7PeerRule]) -> set[tuple[int, HTTPRule | SNIRule | DNSRule]]:
    return {(i, _rule(r)) for r in rules for i in r.identities}


def _admits_all(s: Side) -> bool:
    """A proxied side admitting everything: an L4 allow on a redirected port."""
    return ALLOW_ALL_HTTP in s or ANY_CONNECTION in s or ALLOW_ALL_DNS in s


def _changed_peers(o: _Index, n: _Index, d: Direction) -> tuple[bool, set[int]]:
    """(every peer may have changed, else the peer identities that may have)."""
    if o.ep.enforced(d) != n.ep.enforced(d):
        return True, set()
    if _norm(o.groups.get((d, IDENTITY_ANY), ())) != _norm(n.groups.get((d, IDENTITY_ANY), ())):
        return True, set()
    peers: set[int] = set()
    for key in {k for k in o.groups if k[0] == d} | {k for k in n.groups if k[0] == d}:
        if key[1] != IDENTITY_ANY and _norm(o.groups.get(key, ())) != _norm(n.groups.get(key, ())):
            peers.add(key[1])
    for key in {k for k in o.l7 if k[0] == d} | {k for k in n.l7 if k[0] == d}:
        for ident, _ in _l7_pairs(o.l7.get(key, ())) ^ _l7_pairs(n.l7.get(key, ())):
            if ident == IDENTITY_ANY:
                return True, set()
            peers.add(ident)
    return False, peers


# ------------------------------------------------------------------ verdicts


def _canon(sides: tuple[Side, ...]) -> Any:
    """Equal for two flows iff they admit the same connections and requests
    (up to rules that are equal only semantically, which the samples judge)."""
    if _DENY in sides:
        return _DENY
    restricting = frozenset(s for s in sides if s != _ALLOW and not _admits_all(s))
    return _ALLOW if not restricting else restricting


def request_allowed(sides: tuple[Side, ...], req: HTTPRequest | TLSHello | DNSQuery) -> bool:
    """What trace answers for this request (TLS connection, DNS query), given
    each enforcing side's answer. An SNI listener sees an HTTP request as a
    plain connection (no server name); an HTTP listener can read nothing of a
    TLS connection, so only a rule admitting any request passes it; the DNS
    proxy judges DNS queries only."""
    for s in sides:
        if s == _DENY:
            return False
        if s == _ALLOW:
            continue
        dns_side = any(isinstance(r, DNSRule) for r in s)
        if dns_side or isinstance(req, DNSQuery):
            if not (dns_side and isinstance(req, DNSQuery)
                    and any(isinstance(r, DNSRule) and r.matches(req.name) for r in s)):
                return False
            continue
        if any(isinstance(r, SNIRule) for r in s):
            name = req.server_name if isinstance(req, TLSHello) else None
            if not any(sni_matches(r, name) for r in s):
                return False
            continue
        if isinstance(req, TLSHello):
            if ALLOW_ALL_HTTP not in s:
                return False
            continue
        try:
            seen = replace(req, path=normalize_path(req.path))
        except PathRejected:
            return False
        if not any(http_matches(r, seen) for r in s):
            return False
    return True


def _as_rules(s: Side) -> frozenset[HTTPRule]:
    return frozenset({ALLOW_ALL_HTTP}) if s == _ALLOW else s


def _shown_rules(sides: tuple[Side, ...]) -> tuple[HTTPRule, ...]:
    out: set[HTTPRule] = set()
    for s in sides:
        if s not in (_DENY, _ALLOW) and not _admits_all(s):
            out |= s
    return tuple(sorted(out, key=rule_text))


# ------------------------------------------------------------------ the ends


def _local_ends(state: CompiledState) -> dict[int, FlowEnd]:
    reps: dict[int, int] = {}
    counts: dict[int, int] = {}
    for ep_id, ep in sorted(state.endpoints.items()):
        reps.setdefault(ep.identity, ep_id)
        counts[ep.identity] = counts.get(ep.identity, 0) + 1
    return {
        ident: FlowEnd("endpoint", "host" if ep_id == HOST_ENDPOINT_ID else identity_name(state.identity_labels.get(ident, ())),
                       ident, ident, ep_id, endpoints=counts[ident])
        for ident, ep_id in reps.items()
    }


def _free_address(net: IPNetwork, union: PrefixMap, index_of: Mapping[IPNetwork, int]) -> IPAddress | None:
    """An address whose longest match among the union's prefixes is `net`."""
    want = index_of[net]
    lo, hi = int(net.network_address), int(net.broadcast_address)
    cands = [lo]
    for child in union.inside(net):
        cands.append(int(child.broadcast_address) + 1)
        cands.append(int(child.network_address) - 1)
    for a in cands:
        if lo <= a <= hi:
            addr: IPAddress = IPv4Address(a) if net.version == 4 else IPv6Address(a)
            if union.lookup(addr) == want:
                return addr
    return None


def _outside_ends(old: CompiledState, new: CompiledState, local_ids: set[int]) -> list[FlowEnd]:
    stack = new.stack
    unused = stack.unused_world()
    ends = [FlowEnd("entity", f"entity:{name}", ident, ident) for ident, name in sorted(RESERVED_IDENTITIES.items())
            if ident not in unused and ident not in local_ids]  # the node as an endpoint is a local end
    world = stack.world_of(None)
    nets = sorted((n for n in set(old.ipcache) | set(new.ipcache) if stack.runs(n.version)), key=net_key)
    # Offset so no index reads as PrefixMap's "no match" (world, 2).
    index_of = {net: i + 16 for i, net in enumerate(nets)}
    union = PrefixMap(index_of)
    seen: set[tuple[int, int]] = set()
    for net in nets:
        if net.prefixlen == 0:
            continue  # a default route is its world identity in both states: an entity end
        addr = _free_address(net, union, index_of)
        if addr is None:
            continue
        oi, ni = old.identity_of(addr), new.identity_of(addr)
        if oi in local_ids or ni in local_ids or IDENTITY_HOST in (oi, ni):
            continue  # endpoint and node addresses are ends of their own
        if (oi, ni) in seen or (oi == ni and oi in world):
            continue
        seen.add((oi, ni))
        ends.append(FlowEnd("cidr", f"cidr:{net}", oi, ni, address=addr))
    return ends


# ------------------------------------------------------------------ the diff


def diff_states(old: CompiledState, new: CompiledState, changed_endpoints: Iterable[int] | None = None) -> PolicyDiff:
    """Every flow whose verdict differs between `old` and `new`, compiled over
    the same endpoints with shared identities (compile_pair). Without
    `changed_endpoints`, the endpoints whose policy differs are found here."""
    if set(old.endpoints) != set(new.endpoints):
        raise ValueError("both states must hold the same endpoints")
    locals_ = _local_ends(new)
    local_ids = set(locals_)
    outside = _outside_ends(old, new, local_ids)
    by_ident: dict[int, list[FlowEnd]] = {}
    for e in [*locals_.values(), *outside]:
        by_ident.setdefault(e.old_identity, []).append(e)
        if e.new_identity != e.old_identity:
            by_ident.setdefault(e.new_identity, []).append(e)
    all_ends = [*locals_.values(), *outside]

    idx: dict[tuple[bool, int], _Index] = {}

    def index(is_new: bool, ep_id: int) -> _Index:
        got = idx.get((is_new, ep_id))
        if got is None:
            got = idx[(is_new, ep_id)] = _Index((new if is_new else old).endpoints[ep_id])
        return got

    if changed_endpoints is None:
        changed_endpoints = [
            i for i in new.endpoints
            if new.endpoints[i].enforced(Direction.INGRESS) != old.endpoints[i].enforced(Direction.INGRESS)
            or new.endpoints[i].enforced(Direction.EGRESS) != old.endpoints[i].enforced(Direction.EGRESS)
            or _norm(new.endpoints[i].entries) != _norm(old.endpoints[i].entries)
            or _l7_pairs(r for p in new.endpoints[i].l7 for r in p.peer_rules)
            != _l7_pairs(r for p in old.endpoints[i].l7 for r in p.peer_rules)
            or {(p.key.direction, p.key.port) for p in new.endpoints[i].l7}
            != {(p.key.direction, p.key.port) for p in old.endpoints[i].l7}
            or _l7_pairs(r for p in new.endpoints[i].dns for r in p.peer_rules)
            != _l7_pairs(r for p in old.endpoints[i].dns for r in p.peer_rules)
        ]
    changed_ids = {new.endpoints[i].identity for i in changed_endpoints if i in new.endpoints}

    pairs: set[tuple[FlowEnd, FlowEnd]] = set()
    for ident in changed_ids:
        me = locals_[ident]
        o, n = index(False, me.endpoint_id), index(True, me.endpoint_id)  # type: ignore[arg-type]
        for d in (Direction.EGRESS, Direction.INGRESS):
            every, peers = _changed_peers(o, n, d)
            others = all_ends if every else [e for p in peers for e in by_ident.get(p, ())]
            for other in others:
                pairs.add((me, other) if d == Direction.EGRESS else (other, me))
    for cell in outside:
        if cell.old_identity != cell.new_identity:
            for me in locals_.values():
                pairs.add((me, cell))
                pairs.add((cell, me))

    changes: list[FlowChange] = []
    unchanged: list[Unchanged] = []
    for src, dst in sorted(pairs, key=lambda p: (p[0].sort_key, p[1].sort_key)):
        _pair(src, dst, index, changes, unchanged)
    return PolicyDiff(old, new, tuple(changes), tuple(unchanged), len(new.endpoints), len(locals_), len(pairs))


def _pair(src: FlowEnd, dst: FlowEnd, index: Any, changes: list[FlowChange], unchanged: list[Unchanged]) -> None:
    # (direction, endpoint id, old peer, new peer) of each enforcement point,
    # in trace's order: the source's egress, then the destination's ingress.
    points = []
    if src.endpoint_id is not None:
        points.append((Direction.EGRESS, src.endpoint_id, dst.old_identity, dst.new_identity))
    if dst.endpoint_id is not None:
        points.append((Direction.INGRESS, dst.endpoint_id, src.old_identity, src.new_identity))
    views = [(d, index(False, ep), index(True, ep), op, np_) for d, ep, op, np_ in points]

    def sides(is_new: bool, protocol: Protocol, port: int) -> tuple[Side, ...]:
        return tuple((n if is_new else o).side(d, np_ if is_new else op, protocol, port) for d, o, n, op, np_ in views)

    # Ports 1-65535 of each ported protocol (ANY entries count), and the
    # message types 0-255 of ICMP and ICMPv6 (only their own entries have
    # types; ANY entries match them as a whole).
    for protocol, first, end in _SPACES:
        ported = protocol in PORTED
        bounds = {first, end}
        for d, o, n, op, np_ in views:
            for e in (*o.relevant(d, op), *n.relevant(d, np_)):
                if e.key.protocol == protocol or (ported and e.key.protocol == Protocol.ANY):
                    bounds.add(max(e.key.ports.lo, first))
                    bounds.add(e.key.ports.hi + 1)
        cuts = sorted(b for b in bounds if first <= b <= end)
        run: tuple[int, int, Any, Any] | None = None  # merged l3l4 segments
        for lo, nxt in zip(cuts, cuts[1:]):
            so, sn = sides(False, protocol, lo), sides(True, protocol, lo)
            co, cn = _canon(so), _canon(sn)
            if co == cn:
                continue
            if (co == _DENY) != (cn == _DENY):
                if run is not None and run[1] == lo - 1 and run[2] == (so, co) and run[3] == (sn, cn):
                    run = (run[0], nxt - 1, run[2], run[3])
                    continue
                if run is not None:
                    _emit_l3l4(src, dst, protocol, run, changes)
                run = (lo, nxt - 1, (so, co), (sn, cn))
                continue
            _emit_l7(src, dst, protocol, lo, so, sn, changes, unchanged)
        if run is not None:
            _emit_l3l4(src, dst, protocol, run, changes)


_SPACES = (
    (Protocol.TCP, 1, 65536), (Protocol.UDP, 1, 65536), (Protocol.SCTP, 1, 65536),
    (Protocol.ICMP, 0, 256), (Protocol.ICMPV6, 0, 256),
)


def _emit_l3l4(src: FlowEnd, dst: FlowEnd, protocol: Protocol, run: Any, changes: list[FlowChange]) -> None:
    lo, hi, (so, co), (sn, cn) = run
    changes.append(FlowChange(
        src, dst, protocol, PortRange(lo, hi), "l3l4",
        DENIED if co == _DENY else ALLOWED, DENIED if cn == _DENY else ALLOWED,
        old_http=_shown_rules(so), new_http=_shown_rules(sn),
    ))


def _emit_l7(
    src: FlowEnd, dst: FlowEnd, protocol: Protocol, port: int,
    so: tuple[Side, ...], sn: tuple[Side, ...], changes: list[FlowChange], unchanged: list[Unchanged],
) -> None:
    cands: dict[HTTPRule | SNIRule, str] = {}
    for a, b in zip(so, sn):
        ra, rb = _as_rules(a), _as_rules(b)
        for r in sorted(ra - rb, key=rule_text):
            cands.setdefault(r, "removed")
        for r in sorted(rb - ra, key=rule_text):
            cands.setdefault(r, "added")
    for rule, change in cands.items():
        shown = None if rule in (ALLOW_ALL_HTTP, ANY_CONNECTION) else rule
        for req in rule_samples(shown):
            vo, vn = request_allowed(so, req), request_allowed(sn, req)
            if vo != vn:
                changes.append(FlowChange(
                    src, dst, protocol, PortRange(port, port), "l7",
                    ALLOWED if vo else DENIED, ALLOWED if vn else DENIED, shown, change, req,
                    _shown_rules(so), _shown_rules(sn),
                ))
                break
        else:
            unchanged.append(Unchanged(src, dst, port, shown, change))
