"""Cluster mode in the agent core, against an in-memory shared store: local
endpoints take the cluster's identity, wait (with the reason) while the
store cannot answer and nothing already enforced changes meanwhile, this
node's endpoints are published, and the rest of the cluster reaches the
compiler and the routes."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from agent.core.agent import Agent
from agent.core.models import EndpointState
from agent.core.cluster_ports import ClusterPeers, PeerNode
from agent.daemon import AgentConfig, build_agent
from policy.identity import identity_labels
from tests.agent.conftest import Rig
from tests.agent.fakes import FakeShared, compiler_factory
from tests.agent.test_agent_core import ep


class FakeRouting:
    def __init__(self) -> None:
        self.routes: dict = {}
        self.set_up = False

    async def setup(self) -> None:
        self.set_up = True

    async def set_routes(self, nodes) -> None:
        self.routes = {n.pod_cidr: n.ip for n in nodes.values()}


def cluster_agent(rig: Rig, shared: FakeShared, routing: FakeRouting) -> Agent:
    cfg = AgentConfig(state_dir=rig.state_dir, policy_dir=rig.policy_dir, metrics_port=None, poll_interval=3600.0, settle=0.0)
    return build_agent(
        cfg, compiler_factory=compiler_factory(rig.compilers), loader=rig.loader, datapath=rig.datapath, proxy=rig.proxy,
        shared=shared, routing=routing,
    )


async def test_endpoints_take_the_cluster_identity_and_are_published(rig: Rig) -> None:
    shared, routing = FakeShared(), FakeRouting()
    agent = cluster_agent(rig, shared, routing)
    await agent.start(serve_api=False)
    try:
        assert shared.started and routing.set_up
        view, _ = await agent.create_endpoint(ep("a", "10.200.1.5", app="a"), wait=5)
        want = shared.ids[identity_labels({"app": "a"})]
        assert view.state == EndpointState.READY and view.identity == want
        assert shared.published == {IPv4Address("10.200.1.5"): (want, identity_labels({"app": "a"}))}
        assert agent.status().kvstore == {"ok": True, "detail": ""}
        await agent.delete_endpoint(view.id)
        await agent.queue.drain(5)
        assert shared.published == {}
    finally:
        await agent.stop()


async def test_a_new_label_set_waits_while_the_store_is_down_and_known_ones_keep_theirs(rig: Rig) -> None:
    shared, routing = FakeShared(), FakeRouting()
    agent = cluster_agent(rig, shared, routing)
    await agent.start(serve_api=False)
    try:
        known, _ = await agent.create_endpoint(ep("a", "10.200.1.5", app="a"), wait=5)
        shared.reachable = False
        # A second pod with known labels: the number this node already holds.
        twin, _ = await agent.create_endpoint(ep("a2", "10.200.1.6", app="a"), wait=5)
        assert twin.state == EndpointState.READY and twin.identity == known.identity
        new, _ = await agent.create_endpoint(ep("b", "10.200.1.7", app="b"), wait=5)
        assert new.state == EndpointState.WAITING_FOR_IDENTITY and new.identity is None
        assert "waiting for a cluster identity" in (new.reason or "") and "unreachable" in (new.reason or "")
        assert new.id not in rig.datapath.attached
        assert agent.health().checks["kvstore"] == "etcd unreachable"
        shared.reachable = True
        # The retry comes RETRY_IDENTITY s later: wait batch by batch until it
        # has run. (Waiting for ticket() + 1 waited for a batch after the
        # retry's, which never came, and timed out silently.)
        for _ in range(5):
            after = agent.table.view(new.id)
            if after is not None and after.state == EndpointState.READY:
                break
            assert await agent.queue.wait_for(agent.queue.batches + 1, 10), "no regeneration after the store came back"
        assert after is not None and after.state == EndpointState.READY
        assert after.identity == shared.ids[identity_labels({"app": "b"})]
    finally:
        await agent.stop()


async def test_the_rest_of_the_cluster_reaches_the_compiler_and_the_routes(rig: Rig) -> None:
    shared, routing = FakeShared(), FakeRouting()
    agent = cluster_agent(rig, shared, routing)
    await agent.start(serve_api=False)
    try:
        node_b = PeerNode("b", IPv4Address("192.0.2.2"), IPv4Network("10.200.2.0/24"))
        remote = {IPv4Address("10.200.2.9"): (4242, identity_labels({"app": "far"}))}
        shared.set_peers(ClusterPeers({"b": node_b}, remote))
        await agent.queue.drain(5)
        assert rig.compiler.remote == (remote, frozenset({node_b.ip}))
        assert routing.routes == {node_b.pod_cidr: node_b.ip}
        shared.extra = {"remote_nodes": 1, "remote_endpoints": 1}
        text = (await agent.scrape()).decode()
        assert "ciliate_kvstore_connected 1.0" in text
        assert "ciliate_nodes_remote 1.0" in text and "ciliate_endpoints_remote 1.0" in text
        shared.set_peers(ClusterPeers({}, {}))
        await agent.queue.drain(5)
        assert rig.compiler.remote == ({}, frozenset())
        assert routing.routes == {}
    finally:
        await agent.stop()
