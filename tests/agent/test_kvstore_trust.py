"""What a node believes of the shared store: an entry anyone with write
access to etcd could forge must not reroute or re-identify traffic it has no
business with (agent/adapters/kvstore_state.trusted_peers)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

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
    assert set(peers.nodes) == {"b"} and dict(peers.endpoints) == {ep.ip: (300, LABELS)}


def test_an_endpoint_outside_its_nodes_pod_cidr_gets_no_identity():
    world = RemoteEndpoint(ip=IPv4Address("198.51.100.7"), identity=300, node="b")
    mine = RemoteEndpoint(ip=IPv4Address("10.251.1.9"), identity=300, node="b")
    orphan = RemoteEndpoint(ip=IPv4Address("10.251.3.9"), identity=300, node="ghost")
    peers, refused = trusted_peers(view([B], [world, mine, orphan]), ME)
    assert dict(peers.endpoints) == {}
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


# -- IPv6 (dual-stack nodes) -----------------------------------------------------

ME6 = NodeInfo(name="a", ip=IPv4Address("10.250.0.1"), pod_cidr=IPv4Network("10.251.1.0/24"),
               pod_cidr6=IPv6Network("fd00:10:251:1::/64"))
B6 = NodeInfo(name="b", ip=IPv4Address("10.250.0.2"), pod_cidr=IPv4Network("10.251.2.0/24"),
              pod_cidr6=IPv6Network("fd00:10:251:2::/64"))


def test_an_ipv6_endpoint_is_believed_only_inside_its_nodes_ipv6_pod_cidr():
    good = RemoteEndpoint(ip=IPv6Address("fd00:10:251:2::9"), identity=300, node="b")
    mine = RemoteEndpoint(ip=IPv6Address("fd00:10:251:1::9"), identity=300, node="b")  # this node's range
    world = RemoteEndpoint(ip=IPv6Address("2001:db8::7"), identity=300, node="b")
    peers, refused = trusted_peers(view([B6], [good, mine, world]), ME6)
    assert dict(peers.endpoints) == {good.ip: (300, LABELS)}
    assert len(refused) == 2
    # A node that published no IPv6 pod CIDR owns no IPv6 address at all.
    peers, refused = trusted_peers(view([B], [good]), ME6)
    assert dict(peers.endpoints) == {} and "not inside that node's pod CIDR" in refused[0]


def test_a_node_claiming_an_overlapping_ipv6_pod_cidr_gets_no_route():
    thief = NodeInfo(name="c", ip=IPv4Address("10.250.0.3"), pod_cidr=IPv4Network("10.251.3.0/24"),
                     pod_cidr6=IPv6Network("fd00:10:251::/48"))  # covers this node's and b's
    peers, refused = trusted_peers(view([B6, thief], []), ME6)
    assert set(peers.nodes) == {"b"} and any("fd00:10:251::/48 overlaps" in r for r in refused)
    odd = NodeInfo(name="e", ip=IPv4Address("10.250.0.5"), pod_cidr=IPv4Network("10.251.5.0/24"),
                   pod_cidr6=IPv6Network("fd00:10:251:5::/64"), ip6=IPv6Address("fd00:10:251:1::1"))
    peers, refused = trusted_peers(view([odd], []), ME6)
    assert peers.nodes == {} and "address fd00:10:251:1::1 is inside a pod CIDR" in refused[0]


def test_ipv6_pod_cidrs_route_via_the_nodes_ipv6_address():
    from agent.adapters.node_routing import routes_to

    with_ip6 = NodeInfo(name="c", ip=IPv4Address("10.250.0.3"), pod_cidr=IPv4Network("10.251.3.0/24"),
                        pod_cidr6=IPv6Network("fd00:10:251:3::/64"), ip6=IPv6Address("2001:db8::3"))
    peers, _ = trusted_peers(view([B6, with_ip6, NodeInfo(name="d", ip=IPv4Address("10.250.0.4"),
                                                              pod_cidr=IPv4Network("10.251.4.0/24"))], []), ME6)
    assert routes_to(peers.nodes, ME6.ip) == {
        IPv4Network("10.251.2.0/24"): IPv4Address("10.250.0.2"),
        # b published no IPv6 address: no route (Linux takes no IPv4 next hop for IPv6)
        IPv4Network("10.251.3.0/24"): IPv4Address("10.250.0.3"),
        IPv6Network("fd00:10:251:3::/64"): IPv6Address("2001:db8::3"),
        IPv4Network("10.251.4.0/24"): IPv4Address("10.250.0.4"),
    }


def test_peers_patched_by_the_views_delta_are_what_the_whole_check_gives():
    """The adapter patches the changed addresses only (a forged entry is
    refused the same way), and changed_since() unions what the compiler
    missed; a node change or a relist makes it start over (None)."""
    from pathlib import Path
    from types import SimpleNamespace

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from agent.adapters.kvstore_state import KvstoreState
    from kvstore import layout
    from kvstore.config import EtcdConfig
    from kvstore.mirror import Mirror
    from tests.kvstore.support import apply_mirror_events

    ips = [IPv4Address(f"10.251.2.{i}") for i in range(1, 4)] + [IPv4Address("8.8.8.8"), IPv4Address("10.251.1.7")]
    event = st.one_of(
        st.tuples(st.just("ip"), st.sampled_from(ips), st.sampled_from([300, 301]), st.sampled_from(["a", "b", "b", "c"]), st.booleans()),
        st.tuples(st.just("ip"), st.sampled_from(ips[:3]), st.sampled_from([300, 301]), st.just("b"), st.booleans()),
        st.tuples(st.just("id"), st.sampled_from([300, 301]), st.sampled_from(["x", "y"]), st.booleans()),
        st.tuples(st.just("node"), st.just("b"), st.booleans()),
    )

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.tuples(st.lists(event, max_size=4), st.integers(0, 3)), min_size=1, max_size=8), st.integers(0, 3))
    def check(batches, lag):
        m = Mirror("a")
        m.reset([(layout.node_key("b"), layout.node_value(B))], revision=1)
        state = KvstoreState(EtcdConfig(endpoints=("http://127.0.0.1:1",)), ME, Path("/nonexistent"))
        cluster = SimpleNamespace(view=m.view(), changed_since=m.changed_since)
        state._cluster = cluster  # the view source only; nothing here talks to etcd
        taken = [state.peers()]
        rev = 1
        for batch, unseen in batches:
            # `unseen` views handed out to others (the agent's wake-up) that
            # the adapter never takes: events that came during a regeneration.
            for k, ev in enumerate(batch):
                rev = apply_mirror_events(m, [ev], rev, lambda _: B)
                if k < unseen:
                    m.view()
            cluster.view = m.view()
            before = taken[-1].serial
            peers = state.peers()
            if not any(ev[0] == "node" for ev in batch) and taken[-1].serial:
                assert state.changed_since(before) is not None, "patched by the union of the views it missed"
            whole, refused = trusted_peers(cluster.view, ME)
            assert (dict(peers.endpoints), dict(peers.named_ports)) == (dict(whole.endpoints), dict(whole.named_ports))
            assert sorted(state.refused()) == sorted(refused)
            old = taken[max(0, len(taken) - 1 - lag)]
            since = state.changed_since(old.serial)
            if since is not None:
                moved = {ip for ip in set(old.endpoints) | set(peers.endpoints) if old.endpoints.get(ip) != peers.endpoints.get(ip)}
                assert moved <= since
            taken.append(peers)

    check()
