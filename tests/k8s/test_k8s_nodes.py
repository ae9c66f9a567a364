"""This node's labels come from its Node object (kubesim, the real
`kubernetes` client): a host policy's nodeSelector and a pod policy's
toNodes follow `kubectl label node` without an agent restart, the
`--node-label` flags are added over the Node's labels, and other nodes'
Nodes are never read."""

from __future__ import annotations

from agent.core.ports import HostEndpoint
from policy.compiled import HOST_ENDPOINT_ID, IDENTITY_HOST, Direction, Protocol, lookup
from tests.agent.fakes import FakeShared
from tests.k8s.conftest import CCNP, NODE, eventually

HOST_POLICY = {
    "apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
    "metadata": {"name": "workers-ssh"},
    "spec": {"nodeSelector": {"matchLabels": {"role": "worker"}},
             "ingress": [{"fromEntities": ["cluster"], "toPorts": [{"ports": [{"port": "22", "protocol": "TCP"}]}]}]},
}


def _host_policies(agent) -> list[str]:
    st = agent.status().host_firewall
    assert st is not None
    return st.policies if st.ingress_enforced else []


def _host_realized(agent):
    return agent.regenerator.realized.get(HOST_ENDPOINT_ID)


async def test_a_host_policy_follows_the_node_labels_of_its_node_object(rig):
    rig.node({"kubernetes.io/hostname": NODE})
    rig.node({"role": "worker"}, name="node-b")  # another node's labels are not ours
    rig.co.create_cluster_custom_object(*CCNP, HOST_POLICY)
    agent = rig.build(config={"host": HostEndpoint({})})
    await agent.start(serve_api=False)
    await eventually(lambda: (p := rig.policy("workers-ssh")) is not None and p.state == "enforced")
    await eventually(lambda: _host_realized(agent) is not None)
    assert _host_policies(agent) == [] and not _host_realized(agent).ingress_enforced

    rig.core.patch_node(NODE, {"metadata": {"labels": {"role": "worker"}}})  # kubectl label node node-a role=worker
    await eventually(lambda: _host_policies(agent) == ["workers-ssh"])
    ep = _host_realized(agent)
    assert ep.ingress_enforced and "workers-ssh" in ep.selected_by
    assert agent.status().host_firewall.node_labels == {"kubernetes.io/hostname": NODE, "role": "worker"}
    assert agent.cluster.health()["node_seen"] is True

    rig.core.patch_node(NODE, {"metadata": {"labels": {"role": None}}})  # kubectl label node node-a role-
    await eventually(lambda: not _host_realized(agent).ingress_enforced)
    assert "workers-ssh" not in _host_realized(agent).selected_by
    assert agent.status().host_firewall.node_labels == {"kubernetes.io/hostname": NODE}


async def test_node_label_flags_are_added_over_the_node_objects_labels(rig):
    """Precedence: the Node's labels, each --node-label added over them (the
    flag wins on the same key); a deleted Node leaves its last labels."""
    rig.node({"role": "db", "zone": "a"})
    rig.co.create_cluster_custom_object(*CCNP, HOST_POLICY)
    flags = {"role": "worker"}
    agent = rig.build(config={"host": HostEndpoint(flags), "node_labels": flags})
    await agent.start(serve_api=False)
    await eventually(lambda: agent.status().host_firewall.node_labels == {"role": "worker", "zone": "a"})
    await eventually(lambda: _host_policies(agent) == ["workers-ssh"])

    rig.core.patch_node(NODE, {"metadata": {"labels": {"zone": "b"}}})
    await eventually(lambda: agent.status().host_firewall.node_labels == {"role": "worker", "zone": "b"})
    assert _host_policies(agent) == ["workers-ssh"]

    rig.core.delete_node(NODE)
    await eventually(lambda: NODE not in rig.source.objects["Node"])
    assert agent.status().host_firewall.node_labels == {"role": "worker", "zone": "b"}
    assert _host_policies(agent) == ["workers-ssh"]


def _reaches_host(agent, pod_ep: int) -> bool:
    ep = agent.regenerator.realized[pod_ep]
    return lookup(ep, IDENTITY_HOST, Direction.EGRESS, Protocol.TCP, 80).allowed


async def test_to_nodes_selects_this_node_by_its_node_objects_labels(rig):
    """The node is the host identity, selected when its Node's labels match
    (egress: the host reaches its local pods whatever their ingress says)."""
    rig.node({"kubernetes.io/hostname": NODE})
    rig.pod("web", {"app": "web"})
    rig.create_cnp({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "to-workers", "namespace": "default"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                 "egress": [{"toNodes": [{"matchLabels": {"role": "worker"}}],
                             "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]},
    })
    agent = rig.build()
    await agent.start(serve_api=False)
    web = await rig.endpoint("web", "10.0.0.2")
    await eventually(lambda: (p := rig.policy("default/to-workers")) is not None and p.state == "enforced")
    assert agent.regenerator.realized[web.id].egress_enforced and not _reaches_host(agent, web.id)

    rig.core.patch_node(NODE, {"metadata": {"labels": {"role": "worker"}}})
    await eventually(lambda: _reaches_host(agent, web.id))

    rig.core.patch_node(NODE, {"metadata": {"labels": {"role": "db"}}})
    await eventually(lambda: not _reaches_host(agent, web.id))


async def test_kubectl_label_node_moves_the_node_into_a_host_policy(rig, kubectl):
    rig.node({})
    rig.co.create_cluster_custom_object(*CCNP, HOST_POLICY)
    agent = rig.build(config={"host": HostEndpoint({})})
    await agent.start(serve_api=False)
    await eventually(lambda: _host_realized(agent) is not None)
    assert _host_policies(agent) == []
    assert kubectl("label", "node", NODE, "role=worker").returncode == 0
    await eventually(lambda: _host_policies(agent) == ["workers-ssh"])
    assert kubectl("label", "node", NODE, "role-").returncode == 0
    await eventually(lambda: _host_policies(agent) == [])


async def test_in_cluster_mode_the_node_publishes_its_node_objects_labels(rig):
    """What the other nodes' fromNodes/toNodes select this node by follows
    its Node too, --node-label added over it."""
    rig.node({"role": "db"})
    shared = FakeShared()
    agent = rig.build(config={"node_labels": {"zone": "a"}}, shared=shared)
    await agent.start(serve_api=False)
    await eventually(lambda: shared.node_labels == {"role": "db", "zone": "a"})
    rig.core.patch_node(NODE, {"metadata": {"labels": {"role": "worker"}}})
    await eventually(lambda: shared.node_labels == {"role": "worker", "zone": "a"})
