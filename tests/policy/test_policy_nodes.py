"""fromNodes/toNodes: nodes selected by their labels. A remote node that
published labels gets an identity by them (nodes with the same labels share
one); this node is the host identity, selected when its own labels match.
`remote-node` and `cluster` still select every node; `world` none."""

from __future__ import annotations

from ipaddress import IPv4Address

from policy.compiled import IDENTITY_HOST, IDENTITY_WORLD, Direction, Protocol, lookup
from policy.compiler import Compiler
from policy.identity import IDENTITY_REMOTE_NODE
from policy.endpoint import Endpoint
from policy.load import load_text
from tests.policy.policytest_helpers import policies

N1, N2, N3 = IPv4Address("10.250.0.1"), IPv4Address("10.250.0.2"), IPv4Address("10.250.0.3")
TEXT = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromNodes: [{matchLabels: {role: frontend}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  egress:
  - toNodes: [{matchExpressions: [{key: role, operator: In, values: [db]}]}]
"""


def build(text: str = TEXT, labels=None, own=None) -> Compiler:
    c = Compiler(allow_localhost=False)
    for p in policies(text):
        c.upsert_policy(p)
    c.upsert_endpoint(Endpoint(1, {"app": "web"}, IPv4Address("10.0.0.1")))
    c.set_remote({}, [N1, N2, N3], labels if labels is not None else {N1: {"role": "frontend"}, N2: {"role": "db"}})
    c.set_node_labels(own)
    return c


def admits(c: Compiler, direction: Direction, addr_or_ident, port: int = 80) -> bool:
    state = c.compile()
    ident = addr_or_ident if isinstance(addr_or_ident, int) else state.identity_of(addr_or_ident)
    return lookup(state.endpoints[1], ident, direction, Protocol.TCP, port).allowed


def test_nodes_are_selected_by_their_labels():
    c = build()
    assert admits(c, Direction.INGRESS, N1)
    assert not admits(c, Direction.INGRESS, N2), "a node with other labels was admitted"
    assert not admits(c, Direction.INGRESS, N3), "a node without labels was admitted"
    assert not admits(c, Direction.INGRESS, N1, 81)
    assert admits(c, Direction.EGRESS, N2) and not admits(c, Direction.EGRESS, N1)


def test_a_node_that_changes_its_labels_moves_in_and_out():
    c = build()
    c.set_remote({}, [N1, N2, N3], {N1: {"role": "db"}, N3: {"role": "frontend"}})
    assert not admits(c, Direction.INGRESS, N1) and admits(c, Direction.INGRESS, N3)
    assert admits(c, Direction.EGRESS, N1)


def test_this_node_is_selected_by_its_own_labels():
    c = build(own={"role": "frontend"})
    assert admits(c, Direction.INGRESS, IDENTITY_HOST)
    c.set_node_labels({"role": "other"})
    assert not admits(c, Direction.INGRESS, IDENTITY_HOST)


def test_remote_node_and_cluster_still_select_every_node_and_world_none():
    text = TEXT.replace("fromNodes: [{matchLabels: {role: frontend}}]", "fromEntities: [remote-node]")
    c = build(text)
    for n in (N1, N2, N3):
        assert admits(c, Direction.INGRESS, n)
    assert c.compile().identity_of(N3) == IDENTITY_REMOTE_NODE
    text = TEXT.replace("fromNodes: [{matchLabels: {role: frontend}}]", "fromEntities: [cluster]")
    c = build(text)
    assert all(admits(c, Direction.INGRESS, n) for n in (N1, N2, N3))
    text = TEXT.replace("fromNodes: [{matchLabels: {role: frontend}}]", "fromEntities: [world]")
    c = build(text)
    assert not any(admits(c, Direction.INGRESS, n) for n in (N1, N2, N3))
    assert admits(c, Direction.INGRESS, IDENTITY_WORLD)


def test_an_endpoint_selector_never_selects_a_node_by_its_labels():
    text = TEXT.replace("fromNodes:", "fromEndpoints:")
    c = build(text)
    assert not admits(c, Direction.INGRESS, N1), "a pod selector picked a node"


def test_from_nodes_in_the_wrong_direction_is_refused_with_the_field():
    bad = TEXT.replace("  - fromNodes:", "  - toNodes:")
    res = load_text(bad, "nodes.yaml")
    assert not res.policies
    assert any(e.field == "spec.ingress[0].toNodes" and "belongs to egress rules" in e.reason for e in res.errors)
