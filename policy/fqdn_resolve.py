"""`toFQDNs` peers -> the addresses the node's pods resolved. Pure.

The DNS proxy learns which addresses each name resolved to (dnsproxy/);
this is the one step from those names to peers the compiler knows, taken
with a snapshot of them, as policy/services.py does for Services:
- a toFQDNs item stands for a host CIDRPeer (/32 or /128) per address any
  name it matches resolved to, so the compiler gives each a CIDR identity
  and the kernel's ipcache maps it there;
- an address the cluster knows as a pod, a node or the host is never
  admitted through a name (policy/fqdn_peers.py), and even if it were the
  compiler's ipcache lets endpoint and host entries win over CIDR
  identities, so a CIDR peer never selects them;
- before any pod resolved a matching name, an item selects nothing: the
  rule stays, with no peer, enforcing egress and allowing nothing (fail
  closed), and `notes` says so for the policy status.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from ipaddress import ip_address

from policy.dns_names import DNSNameError, check_match_name
from policy.fqdn_peers import Address, fqdn_peers
from policy.model import CIDRPeer, FQDNPeer, Peer, Policy, Rule
from policy.services import Resolved, resolve_each

# canonical name -> the addresses it resolved to (any endpoint's, unexpired)
Names = Mapping[str, Iterable[Address]]


def _never(_a: Address) -> bool:
    return False


def resolve(policy: Policy, names: Names | None, in_cluster: Callable[[Address], bool] = _never) -> Resolved:
    """The policy with every FQDNPeer replaced; the same object when it has none."""
    if not policy.fqdns():
        return Resolved(policy)
    names = names or {}
    notes: list[str] = []
    specs = []
    for spec in policy.specs:
        specs.append(replace(spec, rules=tuple(_rule(rule, names, in_cluster, notes) for rule in spec.rules)))
    return Resolved(replace(policy, specs=tuple(specs)), tuple(notes))


def _rule(rule: Rule, names: Names, in_cluster: Callable[[Address], bool], notes: list[str]) -> Rule:
    fqdns = [p.selector for p in rule.peers if isinstance(p, FQDNPeer)]
    if not fqdns:
        return rule
    found = fqdn_peers(fqdns, names, in_cluster)
    peers: list[Peer] = [p for p in rule.peers if not isinstance(p, FQDNPeer)]
    for sel in fqdns:
        prefixes = found.admitted.get(sel, frozenset())
        if not prefixes:
            notes.append(f"{rule.ref.path}: toFQDNs {sel}: selects nothing yet: no pod resolved a matching name")
        peers += [CIDRPeer(p) for p in sorted(prefixes, key=lambda n: (n.version, n))]
    for addr, by in sorted(found.refused.items(), key=lambda kv: (kv[0].version, kv[0])):
        notes.append(f"{rule.ref.path}: toFQDNs: {addr} (answered for {', '.join(sorted(by))}) is a cluster address: "
                     "not admitted by name")
    return replace(rule, peers=tuple(dict.fromkeys(peers)))


def resolve_all(policies: Iterable[Policy], names: Names | None) -> tuple[list[Policy], list[str]]:
    """Every policy resolved, and the notes naming their policy (the CLI's
    trace and diff, given the names by the user)."""
    return resolve_each(policies, lambda p: resolve(p, names))


def names_from_flags(items: Iterable[str]) -> dict[str, set[Address]]:
    """`--resolve NAME=ADDR[,ADDR]` values (the CLI's stand-in for what the
    DNS proxy would have learned) -> canonical name -> addresses; ValueError
    naming the value otherwise."""
    out: dict[str, set[Address]] = {}
    for item in items:
        name, sep, addrs = item.partition("=")
        try:
            canon = check_match_name(name)
            parsed = {ip_address(a.strip()) for a in addrs.split(",") if a.strip()}
        except (DNSNameError, ValueError) as e:
            raise ValueError(f"--resolve {item!r}: {e}") from None
        if not sep or not parsed:
            raise ValueError(f"--resolve {item!r}: expected NAME=ADDR[,ADDR]")
        out.setdefault(canon, set()).update(parsed)
    return out
