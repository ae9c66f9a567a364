"""What a node believes of the shared store: an entry anyone with write
access to etcd could forge must not reroute or re-identify traffic it has no
business with (agent/adapters/kvstore_state.trusted_peers)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from agent.adapters.kvstore_state import trusted_peers
from kvstore.model import ClusterView, NodeInfo, RemoteEndpoint

ME = NodeInfo(name="a", ip=IPv4Address("10.250.0.1"), pod_cidr=IPv4Network("10.251.1.0/24"))
B = NodeInfo(name="b", ip=IPv4Address("10.250.0.2"), pod_cidr=IPv4Network("10.251.2.0/24"))
LABELS = frozenset({"k8s:app=x"})


def view(nodes, endpoints) -> ClusterView:
    return ClusterView(nodes={n.name: n for n in nodes}, endpoints={e.ip: e for e in endpoints}, identities={300: LABELS}, revision=1)


def test_a_well_formed_peer_is_taken_whole():
    ep = RemoteEndpoint(ip=IPv4Address("10.251.2.9"), identity=300, node="b")
    peers, refused = trusted_peers(view([B], [ep]), ME)
    assert refused == []
    assert set(peers.nodes) == {"b"} and peers.endpoints == {ep.ip: (300, LABELS)}


def test_an_endpoint_outside_its_nodes_pod_cidr_gets_no_identity():
    world = RemoteEndpoint(ip=IPv4Address("198.51.100.7"), identity=300, node="b")
    mine = RemoteEndpoint(ip=IPv4Address("10.251.1.9"), identity=300, node="b")
    orphan = RemoteEndpoint(ip=IPv4Address("10.251.3.9"), identity=300, node="ghost")
    peers, refused = trusted_peers(view([B], [world, mine, orphan]), ME)
    assert peers.endpoints == {}
    assert len(refused) == 3 and all("not inside that node's pod CIDR" in r for r in refused)


def test_a_node_claiming_this_nodes_or_another_nodes_pod_cidr_gets_no_route():
    thief = NodeInfo(name="c", ip=IPv4Address("10.250.0.3"), pod_cidr=IPv4Network("10.251.0.0/16"))
    twin = NodeInfo(name="d", ip=IPv4Address("10.250.0.4"), pod_cidr=IPv4Network("10.251.2.128/25"))
    peers, refused = trusted_peers(view([B, thief, twin], []), ME)
    assert set(peers.nodes) == {"b"}
    assert any("overlaps this node's" in r for r in refused) and any("overlaps node b's" in r for r in refused)


def test_a_node_address_inside_a_pod_cidr_is_refused():
    odd = NodeInfo(name="e", ip=IPv4Address("10.251.1.77"), pod_cidr=IPv4Network("10.251.5.0/24"))
    peers, refused = trusted_peers(view([odd], []), ME)
    assert peers.nodes == {} and "inside a pod CIDR" in refused[0]
