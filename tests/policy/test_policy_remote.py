"""Other nodes' endpoints in the compiler (cluster mode): they are peers
with the identity the cluster allocated, selectable by labels like local
pods, in the ipcache, and never subjects of local policy; other nodes'
addresses carry `remote-node`."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from policytest_helpers import policies

from policy.compiled import Direction, Verdict, lookup
from policy.compiler import Compiler
from policy.endpoint import Endpoint
from policy.identity import IDENTITY_REMOTE_NODE, identity_labels
from ipcache_facts import assert_ipcache_facts

WEB = Endpoint(1, {"app": "web"}, IPv4Address("10.0.1.5"))
CLIENT_LABELS = identity_labels({"app": "client"})
REMOTE_IP = IPv4Address("10.0.2.7")
POLICY = """apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: '80', protocol: TCP}]}]
  - fromEntities: [remote-node]
    toPorts: [{ports: [{port: '9000', protocol: TCP}]}]
"""


def compiler() -> Compiler:
    c = Compiler()
    for p in policies(POLICY):
        c.upsert_policy(p)
    c.upsert_endpoint(WEB)
    c.compile()
    return c


def allowed(c: Compiler, peer: int, port: int) -> bool:
    """Whether web's ingress map lets `peer` in on TCP `port` (no entry: dropped)."""
    st = c.compile()
    return lookup(st.endpoints[1], peer, Direction.INGRESS, 6, port).verdict == Verdict.ALLOW


def test_a_remote_endpoint_is_a_selectable_peer_with_the_cluster_identity():
    c = compiler()
    assert not allowed(c, 40000, 80)
    c.set_remote({REMOTE_IP: (40000, CLIENT_LABELS)})
    st = c.compile()
    assert st.ipcache[IPv4Network(f"{REMOTE_IP}/32")] == 40000
    assert st.identity_labels[40000] == CLIENT_LABELS
    assert 40000 not in {ep.identity for ep in st.endpoints.values()}  # never a subject
    assert allowed(c, 40000, 80)


def test_a_remote_endpoint_gone_takes_its_identity_and_address_with_it():
    c = compiler()
    c.set_remote({REMOTE_IP: (40000, CLIENT_LABELS)})
    c.compile()
    c.set_remote({})
    st = c.compile()
    assert IPv4Network(f"{REMOTE_IP}/32") not in st.ipcache
    assert 40000 not in st.identity_labels
    assert not allowed(c, 40000, 80)


def test_a_local_endpoint_sharing_a_remote_identity_keeps_it_when_the_remote_one_goes():
    c = compiler()
    local_client = Endpoint(2, {"app": "client"}, IPv4Address("10.0.1.6"))
    c.identities.adopt(CLIENT_LABELS, 40000)
    c.set_remote({REMOTE_IP: (40000, CLIENT_LABELS)})
    c.upsert_endpoint(local_client)
    st = c.compile()
    assert st.endpoints[2].identity == 40000
    c.set_remote({})
    st = c.compile()
    assert st.identity_labels[40000] == CLIENT_LABELS
    assert allowed(c, 40000, 80)
    c.delete_endpoint(2)
    assert 40000 not in c.compile().identity_labels


def test_a_local_endpoint_wins_its_address_over_a_stale_remote_entry():
    c = compiler()
    c.set_remote({WEB.ipv4: (40000, CLIENT_LABELS)})
    st = c.compile()
    assert st.ipcache[IPv4Network(f"{WEB.ipv4}/32")] == st.endpoints[1].identity


def test_other_nodes_addresses_are_remote_node():
    c = compiler()
    node_b = IPv4Address("192.0.2.2")
    c.set_remote({}, node_ips=[node_b])
    st = c.compile()
    assert st.ipcache[IPv4Network(f"{node_b}/32")] == IDENTITY_REMOTE_NODE
    assert allowed(c, IDENTITY_REMOTE_NODE, 9000)
    c.set_remote({}, node_ips=[])
    assert IPv4Network(f"{node_b}/32") not in c.compile().ipcache


def test_adopt_replaces_a_local_number_for_the_same_labels():
    c = Compiler()
    c.upsert_endpoint(Endpoint(2, {"app": "client"}, IPv4Address("10.0.1.6")))
    local = c.compile().endpoints[2].identity
    c.identities.adopt(CLIENT_LABELS, 50000)
    assert c.identities.for_label_set(CLIENT_LABELS) == 50000
    assert c.identities.labels_of(local) == frozenset()


def test_set_remote_with_the_changed_addresses_compiles_what_the_whole_map_does():
    """Cluster mode hands the compiler only the addresses that changed; the
    result must be what comparing the whole map gives, change after change."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    ips = [IPv4Address(f"10.0.2.{i}") for i in range(1, 7)]
    labels = {40000: CLIENT_LABELS, 40001: identity_labels({"app": "other"}), 40002: identity_labels({"app": "client", "v": "2"})}
    maps = st.dictionaries(st.sampled_from(ips), st.sampled_from(sorted(labels)), max_size=6)

    @settings(max_examples=60, deadline=None)
    @given(st.lists(maps, min_size=1, max_size=6))
    def check(steps):
        whole, delta = compiler(), compiler()
        before: dict = {}
        prev = None
        for step in steps:
            now = {ip: (i, labels[i]) for ip, i in step.items()}
            changed = frozenset(ip for ip in set(before) | set(now) if before.get(ip) != now.get(ip))
            whole.set_remote(now)
            delta.set_remote(now, changed=changed)
            a, b = whole.compile(), delta.compile()
            assert a.ipcache == b.ipcache
            assert_ipcache_facts(b, prev)
            prev = b
            assert a.endpoints == b.endpoints
            assert a.identity_labels == b.identity_labels
            before = now

    check()


def test_the_allocators_count_every_change_they_would_save():
    """The agent re-serializes its allocations only when this count moves:
    a change it missed would be lost at the next restart."""
    from policy.identity import IdentityAllocator
    from policy.proxyports import ProxyPortAllocator
    from policy.compiled import RedirectKey

    ids = IdentityAllocator()

    def saved_changes(step) -> bool:
        before, gen = ids.to_json(), ids.generation
        step()
        return (ids.to_json() != before) == (ids.generation != gen)

    assert saved_changes(lambda: ids.for_label_set(CLIENT_LABELS))
    assert saved_changes(lambda: ids.for_label_set(CLIENT_LABELS))  # known: no change, same count
    assert saved_changes(lambda: ids.adopt(CLIENT_LABELS, 40000))
    assert saved_changes(lambda: ids.adopt(CLIENT_LABELS, 40000))
    assert saved_changes(lambda: ids.for_cidr(IPv4Network("192.0.2.0/24")))
    assert saved_changes(lambda: ids.for_node({"role": "db"}))
    assert saved_changes(lambda: ids.release_cidrs([IPv4Network("192.0.2.0/24")]))
    assert saved_changes(lambda: ids.release_cidrs([IPv4Network("192.0.2.0/24")]))

    ports = ProxyPortAllocator()
    key = RedirectKey(1, Direction.INGRESS, 80)
    for step in (lambda: ports.allocate(key), lambda: ports.allocate(key), lambda: ports.release(key), lambda: ports.release(key)):
        before, gen = ports.to_json(), ports.generation
        step()
        assert (ports.to_json() != before) == (ports.generation != gen)


def test_named_ports_of_remote_pods_patched_by_changed_address_equal_the_whole_map():
    """An egress `port: http` resolves by the ports remote pods publish; with
    only the changed addresses handed over, the result must be the one the
    whole map gives, as pods come, go and rename their ports."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    egress = """apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-out}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: http, protocol: TCP}]}]
"""
    ips = [IPv4Address(f"10.0.2.{i}") for i in range(1, 6)]
    ports = st.sampled_from([(), (("http", 6, 8080),), (("http", 6, 9090),), (("web", 6, 80),)])
    pods = st.dictionaries(st.sampled_from(ips), st.tuples(st.sampled_from([40000, 40001]), ports), max_size=5)
    labels = {40000: CLIENT_LABELS, 40001: identity_labels({"app": "other"})}

    def fresh() -> Compiler:
        c = compiler()
        for p in policies(egress):
            c.upsert_policy(p)
        return c

    @settings(max_examples=60, deadline=None)
    @given(st.lists(pods, min_size=1, max_size=6))
    def check(steps):
        whole, delta = fresh(), fresh()
        before: dict = {}
        for step in steps:
            eps = {ip: (i, labels[i]) for ip, (i, _) in step.items()}
            named = {ip: p for ip, (_, p) in step.items() if p}
            changed = frozenset(ip for ip in set(before) | set(step) if before.get(ip) != step.get(ip))
            whole.set_remote(eps, named_ports=named)
            delta.set_remote(eps, named_ports=named, changed=changed)
            assert whole.compile().endpoints == delta.compile().endpoints
            before = dict(step)

    check()
