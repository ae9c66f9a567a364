"""Host policies (CiliumClusterwideNetworkPolicy with nodeSelector): parsed,
refused where Cilium refuses them, and compiled into the node's own endpoint
(HOST_ENDPOINT_ID) only, never into a pod's."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from policy.compiled import HOST_ENDPOINT_ID, IDENTITY_HOST, IDENTITY_WORLD, Direction, Protocol, lookup
from policy.compiler import Compiler, compile_state
from policy.endpoint import Endpoint
from policy.host_rails import rails_policy
from policy.load import load_text
from tests.policy.policytest_helpers import policies

HOST_FW = """
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: host-fw}
spec:
  nodeSelector: {matchLabels: {node-role.kubernetes.io/worker: ""}}
  ingress:
  - fromEntities: [cluster]
  - fromEntities: [world]
    toPorts: [{ports: [{port: "22", protocol: TCP}]}]
  egress:
  - toEntities: [world]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
"""
WORKER = {"node-role.kubernetes.io/worker": "", "kubernetes.io/hostname": "n1"}
POD = Endpoint(1, {"app": "web"}, IPv4Address("10.0.0.1"))


def allowed(state, direction, peer, port, ep_id=HOST_ENDPOINT_ID, proto=Protocol.TCP):
    return lookup(state.endpoints[ep_id], peer, direction, proto, port).allowed


def test_a_host_policy_applies_to_the_node_whose_labels_it_selects():
    state = compile_state(policies(HOST_FW), [POD], host_labels=WORKER)
    host = state.endpoints[HOST_ENDPOINT_ID]
    assert (host.identity, host.ingress_enforced, host.egress_enforced) == (IDENTITY_HOST, True, True)
    assert allowed(state, Direction.INGRESS, IDENTITY_WORLD, 22)
    assert not allowed(state, Direction.INGRESS, IDENTITY_WORLD, 80)
    assert allowed(state, Direction.INGRESS, state.endpoints[1].identity, 80), "cluster admits the node's pods"
    assert allowed(state, Direction.EGRESS, IDENTITY_WORLD, 443)
    assert not allowed(state, Direction.EGRESS, IDENTITY_WORLD, 80)


def test_a_host_policy_never_selects_a_pod_whatever_labels_it_has():
    sneaky = Endpoint(2, {"node-role.kubernetes.io/worker": "", "reserved:host-policy": "x"}, IPv4Address("10.0.0.2"))
    state = compile_state(policies(HOST_FW), [POD, sneaky], host_labels=WORKER)
    for ep_id in (1, 2):
        ep = state.endpoints[ep_id]
        assert not ep.ingress_enforced and not ep.egress_enforced and not ep.selected_by


def test_an_empty_endpoint_selector_does_not_select_the_node():
    text = """
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: all-pods}
spec:
  endpointSelector: {}
  ingress: [{fromEntities: [cluster]}]
"""
    state = compile_state(policies(text), [POD], host_labels=WORKER)
    assert not state.endpoints[HOST_ENDPOINT_ID].ingress_enforced
    assert state.endpoints[1].ingress_enforced


def test_a_node_the_selector_does_not_match_stays_open():
    state = compile_state(policies(HOST_FW), [POD], host_labels={"kubernetes.io/hostname": "n2"})
    host = state.endpoints[HOST_ENDPOINT_ID]
    assert not host.ingress_enforced and not host.egress_enforced


def test_without_a_host_endpoint_host_policies_compile_to_nothing():
    state = compile_state(policies(HOST_FW), [POD])
    assert HOST_ENDPOINT_ID not in state.endpoints


def test_node_labels_and_policies_changing_recompile_the_node():
    c = Compiler()
    for p in policies(HOST_FW):
        c.upsert_policy(p)
    c.set_host({"kubernetes.io/hostname": "n1"})
    assert not c.compile().endpoints[HOST_ENDPOINT_ID].ingress_enforced
    c.set_host(WORKER)
    assert c.compile().endpoints[HOST_ENDPOINT_ID].ingress_enforced
    assert c.endpoints_of_policy("CiliumClusterwideNetworkPolicy/host-fw") == {HOST_ENDPOINT_ID}
    c.delete_policy("CiliumClusterwideNetworkPolicy/host-fw")
    assert not c.compile().endpoints[HOST_ENDPOINT_ID].ingress_enforced
    c.set_host(None)
    assert HOST_ENDPOINT_ID not in c.compile().endpoints


def test_the_agents_peers_stay_reachable_but_enforce_nothing_by_themselves():
    rails = rails_policy([(IPv4Address("192.0.2.10"), 2379)])
    assert rails is not None
    c = Compiler()
    c.upsert_policy(rails)
    c.set_host(WORKER)
    alone = c.compile()
    assert not alone.endpoints[HOST_ENDPOINT_ID].egress_enforced
    for p in policies(HOST_FW):
        c.upsert_policy(p)
    state = c.compile()
    etcd = state.identity_of(IPv4Address("192.0.2.10"))
    assert allowed(state, Direction.EGRESS, etcd, 2379), "a host policy cut the agent off its kvstore"
    assert not allowed(state, Direction.EGRESS, etcd, 2380)
    assert not allowed(state, Direction.EGRESS, state.identity_of(IPv4Address("192.0.2.11")), 2379)


@pytest.mark.parametrize("text, field, reason", [
    (HOST_FW.replace("CiliumClusterwideNetworkPolicy", "CiliumNetworkPolicy"), "spec.nodeSelector",
     "nodeSelector needs a CiliumClusterwideNetworkPolicy"),
    (HOST_FW.replace("  nodeSelector:", "  endpointSelector: {}\n  nodeSelector:"), "spec.nodeSelector",
     "not both"),
    (HOST_FW.replace('[{ports: [{port: "22", protocol: TCP}]}]', '[{ports: [{port: "22", protocol: TCP}], rules: {http: [{}]}}]'),
     "spec.ingress[1].toPorts[0].rules", "not supported in a host policy"),
    ("apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: x}\nspec:\n  ingress: [{}]\n",
     "spec.endpointSelector", "required: endpointSelector, or nodeSelector"),
])
def test_what_a_host_policy_may_not_say_is_refused_with_the_field(text, field, reason):
    res = load_text(text, "host.yaml")
    assert not res.policies
    assert any(e.field == field and reason in e.reason for e in res.errors), [str(e) for e in res.errors]


def test_policy_diff_shows_what_changes_for_the_node():
    from policy.diff import diff_policies

    new = HOST_FW.replace('"22"', '"2222"')
    d = diff_policies(policies(HOST_FW), policies(new), [POD], host_labels=WORKER)
    got = {(c.src.name, c.dst.name, str(c.ports), c.protocol.name, c.old, c.new) for c in d.changes}
    assert ("entity:world", "host", "22", "TCP", "allowed", "denied") in got
    assert ("entity:world", "host", "2222", "TCP", "denied", "allowed") in got
    assert all(c.dst.name == "host" for c in d.changes), got
