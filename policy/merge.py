"""Merge the rule atoms of one identity into disjoint, verdict-resolved entries.

Input: every (direction, peer, protocol, port range, verdict, rule) that the
policies selecting an identity contribute, plus the HTTP and SNI rules per
redirected (direction, port). Output: entries whose port ranges are disjoint
per (peer, direction, protocol), with DENY > REDIRECT > ALLOW resolved per
port segment, and the L7 peer rules per listener, including the
ALLOW_ALL_HTTP (ANY_CONNECTION on an SNI listener) rule a peer gets when an
L4 allow covers a redirected port (the kernel sends it to the proxy because
REDIRECT beats ALLOW). Pure.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from operator import attrgetter
from typing import NamedTuple

from policy.compiled import (
    ALLOW_ALL_DNS,
    ALLOW_ALL_HTTP,
    ANY_CONNECTION,
    Direction,
    DNSRule,
    HTTPRule,
    L7Kind,
    L7PeerRule,
    PolicyEntry,
    PolicyKey,
    PortRange,
    Protocol,
    RuleRef,
    SNIRule,
    Verdict,
)
from policy.identity import IDENTITY_ANY

# Sorting by a C-level key tuple is far cheaper than RuleRef's generated __lt__.
_REF_KEY = attrgetter("kind", "policy", "path")

L7Rule = HTTPRule | SNIRule | DNSRule
# (lo, hi, verdict, ref)
Atom = tuple[int, int, Verdict, RuleRef]
# (direction, protocol, lo, hi, verdict, ref)
Item = tuple[Direction, Protocol, int, int, Verdict, RuleRef]


@dataclass
class Atoms:
    """Rule items keyed by the peer set they apply to. Peers are expanded
    only at the end, and peers sharing the same items share the work."""

    items: dict[frozenset[int], list[Item]] = field(default_factory=lambda: defaultdict(list))
    # (direction, port) -> [(peers, HTTP, SNI or DNS rule, ref)]
    l7: dict[tuple[Direction, int], list[tuple[frozenset[int], "L7Rule", RuleRef]]] = field(
        default_factory=lambda: defaultdict(list)
    )


def _segments(atoms: list[Atom]) -> list[tuple[int, int, Verdict, tuple[RuleRef, ...]]]:
    if len(atoms) == 1:
        lo, hi, v, ref = atoms[0]
        return [(lo, hi, v, (ref,))]
    lo0, hi0 = atoms[0][0], atoms[0][1]
    if all(a[0] == lo0 and a[1] == hi0 for a in atoms):
        # Common case: every rule names the same ports; only verdicts merge.
        best = max(a[2] for a in atoms)
        return [(lo0, hi0, best, tuple(sorted({a[3] for a in atoms if a[2] == best}, key=_REF_KEY)))]
    bounds = sorted({a[0] for a in atoms} | {a[1] + 1 for a in atoms})
    out: list[tuple[int, int, Verdict, tuple[RuleRef, ...]]] = []
    for i in range(len(bounds) - 1):
        lo, hi = bounds[i], bounds[i + 1] - 1
        best: Verdict | None = None
        refs: set[RuleRef] = set()
        for alo, ahi, v, ref in atoms:
            if alo <= lo and hi <= ahi:
                if best is None or v > best:
                    best, refs = v, {ref}
                elif v == best:
                    refs.add(ref)
        if best is None:
            continue
        r = tuple(sorted(refs, key=_REF_KEY))
        # REDIRECT segments never merge: each port is its own listener.
        if out and out[-1][1] == lo - 1 and out[-1][2] == best and out[-1][3] == r and best != Verdict.REDIRECT:
            out[-1] = (out[-1][0], hi, best, r)
        else:
            out.append((lo, hi, best, r))
    return out


def merge_entries(atoms: Atoms) -> tuple[PolicyEntry, ...]:
    """Entries with REDIRECT proxy_port 0 (the caller stamps ports per endpoint)."""
    peersets = [ps for ps, items in atoms.items.items() if items]
    signature: dict[int, list[int]] = defaultdict(list)
    for j, ps in enumerate(peersets):
        for peer in ps:
            signature[peer].append(j)
    by_signature: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for peer, js in signature.items():
        by_signature[tuple(js)].append(peer)
    entries: list[PolicyEntry] = []
    for js, peers in by_signature.items():
        groups: dict[tuple[Direction, Protocol], list[Atom]] = defaultdict(list)
        for j in js:
            for d, proto, lo, hi, v, ref in atoms.items[peersets[j]]:
                groups[(d, proto)].append((lo, hi, v, ref))
        for (d, proto), lst in groups.items():
            for lo, hi, v, refs in _segments(lst):
                ports = PortRange(lo, hi)
                for peer in peers:
                    entries.append(PolicyEntry(PolicyKey(peer, d, proto, ports), v, 0, refs))
    entries.sort(key=_entry_key)
    return tuple(entries)


def _entry_key(e: PolicyEntry) -> tuple[int, int, int, int]:
    k = e.key
    return (k.identity, k.direction, k.protocol, k.ports.lo)


def _l4_allows(atoms: Atoms, direction: Direction, port: int, protocols: frozenset[Protocol]) -> dict[int, set[RuleRef]]:
    """Peers with an L4 ALLOW covering `port` under one of `protocols`, with the rules that allowed it."""
    out: dict[int, set[RuleRef]] = defaultdict(set)
    for ps, items in atoms.items.items():
        refs = {
            ref
            for d, proto, lo, hi, v, ref in items
            if d == direction and v == Verdict.ALLOW and proto in protocols and lo <= port <= hi
        }
        if refs:
            for peer in ps:
                out[peer] |= refs
    return out


class L7Listener(NamedTuple):
    """One redirected (direction, port): L7Policy's fields but its key and port."""

    peer_rules: tuple[L7PeerRule, ...]
    kind: L7Kind = L7Kind.HTTP
    shadowed: tuple[RuleRef, ...] = ()


def merge_l7(atoms: Atoms) -> dict[tuple[Direction, int], L7Listener]:
    out: dict[tuple[Direction, int], L7Listener] = {}
    for (direction, port), items in atoms.l7.items():
        # A listener inspects either HTTP or TLS server names. When both land
        # on one port, the SNI listener wins and the HTTP rules admit nothing
        # there: fail closed (a TLS connection has no HTTP the proxy could
        # read, and letting it through unread would open the port), and
        # `shadowed` names them so trace says why.
        # DNS rules likewise win a port they share with HTTP rules: the DNS
        # proxy gets the port, and the HTTP rules there admit nothing.
        kind = _kind(items)
        allow_all = _ALLOW_ALL[kind]
        by_rule: dict[L7Rule, tuple[set[int], set[RuleRef]]] = {}
        redirected: set[int] = set()
        shadowed: set[RuleRef] = set()
        for peers, l7, ref in items:
            redirected |= peers
            if not isinstance(l7, _RULE_TYPE[kind]):
                shadowed.add(ref)
                continue
            ids, refs = by_rule.setdefault(l7, (set(), set()))
            ids |= peers
            refs.add(ref)
        allows = _l4_allows(atoms, direction, port, _L4_PROTOCOLS[kind])
        if allows:
            if IDENTITY_ANY in redirected:
                extra = set(allows)
            elif IDENTITY_ANY in allows:
                extra = set(redirected)
            else:
                extra = redirected & set(allows)
            if extra:
                ids, refs = by_rule.setdefault(allow_all, (set(), set()))
                ids |= extra
                for peer in extra:
                    refs |= allows.get(peer, set()) | allows.get(IDENTITY_ANY, set())
        rules = [_peer_rule(frozenset(ids), rule, tuple(sorted(refs, key=_REF_KEY))) for rule, (ids, refs) in by_rule.items()]
        rules.sort(key=lambda r: (sorted(r.identities), repr(r.http), repr(r.sni), repr(r.dns)))
        out[(direction, port)] = L7Listener(tuple(rules), kind, tuple(sorted(shadowed, key=_REF_KEY)))
    return out


_RULE_TYPE: dict[L7Kind, type] = {L7Kind.HTTP: HTTPRule, L7Kind.SNI: SNIRule, L7Kind.DNS: DNSRule}
_ALLOW_ALL: dict[L7Kind, L7Rule] = {L7Kind.HTTP: ALLOW_ALL_HTTP, L7Kind.SNI: ANY_CONNECTION, L7Kind.DNS: ALLOW_ALL_DNS}
_TCP = frozenset({Protocol.TCP, Protocol.ANY})
# An L4 allow of UDP or TCP 53 next to a DNS rule lets its peers ask for any name.
_L4_PROTOCOLS = {L7Kind.HTTP: _TCP, L7Kind.SNI: _TCP, L7Kind.DNS: frozenset({Protocol.TCP, Protocol.UDP, Protocol.ANY})}


def _kind(items: list[tuple[frozenset[int], L7Rule, RuleRef]]) -> L7Kind:
    if any(isinstance(r, SNIRule) for _, r, _ in items):
        return L7Kind.SNI
    if any(isinstance(r, DNSRule) for _, r, _ in items):
        return L7Kind.DNS
    return L7Kind.HTTP


def _peer_rule(ids: frozenset[int], rule: L7Rule, refs: tuple[RuleRef, ...]) -> L7PeerRule:
    if isinstance(rule, SNIRule):
        return L7PeerRule(ids, None, refs, rule)
    if isinstance(rule, DNSRule):
        return L7PeerRule(ids, None, refs, dns=rule)
    return L7PeerRule(ids, rule, refs)
