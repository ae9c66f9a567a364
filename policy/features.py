"""Which parts of the policy language a policy's rules use, for the
`ciliate_policy_rules` metric: operators see how much of their policy rests
on named ports, SCTP, ICMP types, TLS server names, toServices, HTTP rules
or host policies (nodeSelector)
(and so what a regression there would touch). Pure.
"""

from __future__ import annotations

from collections import Counter

from policy.compiled import Protocol
from policy.model import Policy, Rule, ServicePeer

FEATURES = ("named_ports", "sctp", "icmp", "server_names", "to_services", "http", "host")


def _rule_features(rule: Rule) -> set[str]:
    out: set[str] = set()
    if any(isinstance(p, ServicePeer) for p in rule.peers):
        out.add("to_services")
    for pr in rule.port_rules:
        if pr.http is not None:
            out.add("http")
        if pr.server_names is not None:
            out.add("server_names")
        for ps in pr.ports:
            if ps.name is not None:
                out.add("named_ports")
            if ps.protocol == Protocol.SCTP:
                out.add("sctp")
            if ps.protocol in (Protocol.ICMP, Protocol.ICMPV6):
                out.add("icmp")
    return out


def rule_features(policies: list[Policy]) -> dict[str, int]:
    """Feature -> how many rules use it (every feature named, 0 when unused).
    Pass the policies as written: toServices is resolved away later."""
    counts: Counter[str] = Counter({f: 0 for f in FEATURES})
    for policy in policies:
        for spec in policy.specs:
            for rule in spec.rules:
                counts.update(_rule_features(rule) | ({"host"} if spec.node_subject is not None else set()))
    return dict(counts)
