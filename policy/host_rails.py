"""What the node must always reach, whatever its host policies say.

A host policy that enforces the node's egress and forgets the agent's own
peers would cut the agent off from its kvstore and its API server on their
next reconnect, and with them from every later policy change, including the
one that would fix it. So while the node is an endpoint the agent adds one
reserved policy: egress to each of those (address, TCP port) pairs. It turns
no direction's enforcement on (a node without host policies stays open), and
an explicit deny in a host policy still wins, as every deny does. Replies and
connections open before the host firewall pass on conntrack
(redirect/host_connections.py). Pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import ip_network

from policy.compiled import Direction, PortRange, Protocol, RuleRef
from policy.families import IPAddress
from policy.model import NO_ENDPOINTS, CIDRPeer, Policy, PolicySpec, PortRule, PortSpec, Rule
from policy.selector import LabelSelector

KIND = "reserved"
NAME = "host-always-reach"
KEY = f"{KIND}/{NAME}"


def rails_policy(peers: Iterable[tuple[IPAddress, int]]) -> Policy | None:
    """The reserved policy admitting the node's egress to these peers; None
    when there are none."""
    rules = tuple(
        Rule(
            Direction.EGRESS, False, (CIDRPeer(ip_network(addr)),),
            (PortRule((PortSpec(Protocol.TCP, PortRange(port, port)),)),),
            RuleRef(KIND, NAME, f"the agent's peer {addr}:{port}"),
        )
        for addr, port in sorted(set(peers), key=lambda p: (p[0].version, int(p[0]), p[1]))
    )
    if not rules:
        return None
    spec = PolicySpec(NO_ENDPOINTS, rules, enforce_ingress=False, enforce_egress=False, node_subject=LabelSelector())
    return Policy(KIND, NAME, None, (spec,), source="agent")
