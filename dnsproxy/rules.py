"""Whether an endpoint may ask a resolver for a name: its egress DNS rules
(`toPorts[].rules.dns`) as the proxy applies them. Pure.

As Cilium: the rules that cover a (resolver, port, protocol) are ORed; a
query for a name none of them matches is denied; `matchPattern: "*"`
allows every name (DNS visibility without restriction). Queries to a
(resolver, port) no DNS rule covers never reach the proxy: the kernel
decides them at L3/L4.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from policy.dns_names import NameSelector
from policy.identity import IDENTITY_ANY

from .forwarder import Verdict


@dataclass(frozen=True, slots=True)
class DNSPortRule:
    peers: frozenset[int]  # resolver identities; IDENTITY_ANY: any peer the L3 rule allows
    port: int  # 0: any port
    protocol: str  # "UDP", "TCP" or "ANY"
    names: tuple[NameSelector, ...]
    rule: str  # the policy and rule it comes from, for the monitor

    def covers(self, peer: int, port: int, protocol: str) -> bool:
        return (
            (IDENTITY_ANY in self.peers or peer in self.peers)
            and self.port in (0, port)
            and self.protocol in ("ANY", protocol)
        )


def decide(rules: Iterable[DNSPortRule], peer: int, port: int, protocol: str, name: str) -> Verdict:
    covering = [r for r in rules if r.covers(peer, port, protocol)]
    for r in covering:
        for sel in r.names:
            if sel.matches(name):
                return Verdict(True, f"{r.rule}: {sel}")
    if not covering:
        return Verdict(False, "no DNS rule covers this resolver and port")
    return Verdict(False, "no DNS rule matches the name")
