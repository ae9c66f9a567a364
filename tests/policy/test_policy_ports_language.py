"""Named ports, SCTP and ICMP types, compiled: what the kernel would decide
(compiled.lookup is the program's reference) for real policy text."""

from __future__ import annotations

from ipaddress import IPv4Address

from policy.compiled import Direction, Protocol, lookup
from policy.compiler import Compiler
from policy.endpoint import Endpoint, NamedPort
from tests.policy.policytest_helpers import policies

TCP, UDP, SCTP = Protocol.TCP, Protocol.UDP, Protocol.SCTP
IN, OUT = Direction.INGRESS, Direction.EGRESS

NP_NAMED_INGRESS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - ports: [{port: serve-80}]
"""

CNP_NAMED_EGRESS = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {tier: backend}}]
    toPorts: [{ports: [{port: http}]}]
"""


def ep(i: int, labels: dict[str, str], *ports: tuple[str, Protocol, int]) -> Endpoint:
    return Endpoint(i, labels, IPv4Address(f"10.0.0.{i}"), named_ports=tuple(NamedPort(n, p, num) for n, p, num in ports))


def compiler(text: str, *eps: Endpoint) -> Compiler:
    c = Compiler()
    for p in policies(text):
        c.upsert_policy(p)
    for e in eps:
        c.upsert_endpoint(e)
    c.compile()
    return c


def allowed(c: Compiler, ep_id: int, peer_ep: int | None, direction: Direction, proto: Protocol, port: int) -> bool:
    state = c.compile()
    peer = c.identity_of_endpoint(peer_ep) if peer_ep is not None else 2
    return lookup(state.endpoints[ep_id], peer, direction, proto, port).allowed


def test_an_ingress_named_port_is_the_selected_pods_own_port():
    c = compiler(NP_NAMED_INGRESS, ep(1, {"app": "web"}, ("serve-80", TCP, 80), ("serve-81", TCP, 81)), ep(2, {"app": "client"}))
    assert allowed(c, 1, 2, IN, TCP, 80)
    assert not allowed(c, 1, 2, IN, TCP, 81)
    assert not allowed(c, 1, 2, IN, UDP, 80), "a TCP name admitted UDP"


def test_a_name_the_pod_does_not_serve_matches_nothing_and_still_isolates():
    c = compiler(NP_NAMED_INGRESS, ep(1, {"app": "web"}, ("http", TCP, 80)), ep(2, {"app": "client"}))
    assert c.compile().endpoints[1].ingress_enforced
    for port in (0, 80, 8080):
        assert not allowed(c, 1, 2, IN, TCP, port)


def test_a_named_port_follows_the_pods_ports_when_they_change():
    c = compiler(NP_NAMED_INGRESS, ep(1, {"app": "web"}), ep(2, {"app": "client"}))
    assert not allowed(c, 1, 2, IN, TCP, 8080)
    c.upsert_endpoint(ep(1, {"app": "web"}, ("serve-80", TCP, 8080)))
    assert allowed(c, 1, 2, IN, TCP, 8080)
    c.upsert_endpoint(ep(1, {"app": "web"}, ("serve-80", TCP, 9090)))
    assert not allowed(c, 1, 2, IN, TCP, 8080) and allowed(c, 1, 2, IN, TCP, 9090)


def test_pods_with_the_same_labels_and_other_names_do_not_share_a_resolution():
    c = compiler(NP_NAMED_INGRESS, ep(1, {"app": "web", "x": "1"}, ("serve-80", TCP, 80)),
                 ep(3, {"app": "web", "x": "2"}, ("serve-80", TCP, 8080)), ep(2, {"app": "client"}))
    assert allowed(c, 1, 2, IN, TCP, 80) and not allowed(c, 1, 2, IN, TCP, 8080)
    assert allowed(c, 3, 2, IN, TCP, 8080) and not allowed(c, 3, 2, IN, TCP, 80)


def test_an_egress_named_port_resolves_per_destination():
    c = compiler(CNP_NAMED_EGRESS, ep(1, {"app": "client"}), ep(2, {"tier": "backend", "v": "a"}, ("http", TCP, 8080)),
                 ep(3, {"tier": "backend", "v": "b"}, ("http", TCP, 9090)), ep(4, {"app": "other"}, ("http", TCP, 7070)))
    assert allowed(c, 1, 2, OUT, TCP, 8080) and not allowed(c, 1, 2, OUT, TCP, 9090)
    assert allowed(c, 1, 3, OUT, TCP, 9090) and not allowed(c, 1, 3, OUT, TCP, 8080)
    assert not allowed(c, 1, 4, OUT, TCP, 7070), "a pod the rule does not select was admitted by its port name"


def test_an_egress_named_port_follows_a_new_backend():
    c = compiler(CNP_NAMED_EGRESS, ep(1, {"app": "client"}), ep(2, {"tier": "backend"}, ("http", TCP, 8080)))
    c.upsert_endpoint(ep(3, {"tier": "backend"}, ("http", TCP, 8081)))  # same identity, another number
    assert allowed(c, 1, 2, OUT, TCP, 8081) and allowed(c, 1, 3, OUT, TCP, 8080)
    c.delete_endpoint(3)
    assert not allowed(c, 1, 2, OUT, TCP, 8081)


def test_a_named_port_with_a_protocol_must_match_the_ports_protocol():
    text = NP_NAMED_INGRESS.replace("[{port: serve-80}]", "[{port: dns, protocol: UDP}]")
    c = compiler(text, ep(1, {"app": "web"}, ("dns", TCP, 53)), ep(2, {"app": "client"}))
    assert not allowed(c, 1, 2, IN, UDP, 53) and not allowed(c, 1, 2, IN, TCP, 53)
    c.upsert_endpoint(ep(1, {"app": "web"}, ("dns", UDP, 53)))
    assert allowed(c, 1, 2, IN, UDP, 53) and not allowed(c, 1, 2, IN, TCP, 53)


def test_a_named_port_with_http_rules_redirects_the_resolved_port():
    text = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - toPorts:
    - ports: [{port: http, protocol: TCP}]
      rules: {http: [{method: GET}]}
"""
    c = compiler(text, ep(1, {"app": "web"}, ("http", TCP, 8080)), ep(2, {"app": "client"}))
    pol = c.compile().endpoints[1]
    assert [p.key.port for p in pol.l7] == [8080]
    d = lookup(pol, c.identity_of_endpoint(2), IN, TCP, 8080)
    assert d.proxy_port == pol.l7[0].proxy_port


def test_sctp_in_a_network_policy_is_enforced_by_port_and_isolates_every_other_protocol():
    text = NP_NAMED_INGRESS.replace("[{port: serve-80}]", "[{port: 5000, protocol: SCTP}]")
    c = compiler(text, ep(1, {"app": "web"}), ep(2, {"app": "client"}))
    assert allowed(c, 1, 2, IN, SCTP, 5000)
    assert not allowed(c, 1, 2, IN, SCTP, 5001)
    assert not allowed(c, 1, 2, IN, TCP, 5000) and not allowed(c, 1, 2, IN, UDP, 5000)
    assert not allowed(c, 1, 2, IN, Protocol.ICMP, 8)


def test_icmps_admit_the_named_types_of_their_family_only():
    text = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ping, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    icmps:
    - fields: [{type: EchoRequest}, {type: 128, family: IPv6}]
  ingressDeny:
  - icmps: [{fields: [{type: Timestamp}]}]
"""
    c = compiler(text, ep(1, {"app": "web"}), ep(2, {"app": "client"}), ep(3, {"app": "other"}))
    assert allowed(c, 1, 2, IN, Protocol.ICMP, 8)
    assert allowed(c, 1, 2, IN, Protocol.ICMPV6, 128)
    assert not allowed(c, 1, 2, IN, Protocol.ICMP, 128), "an IPv6 type admitted ICMP"
    assert not allowed(c, 1, 2, IN, Protocol.ICMP, 13)
    assert not allowed(c, 1, 3, IN, Protocol.ICMP, 8), "a peer the rule does not name pinged"
    assert not allowed(c, 1, 2, IN, TCP, 8), "an ICMP type admitted TCP port 8"


def test_rule_features_count_the_rules_using_each_part_of_the_language():
    from policy.features import rule_features

    text = NP_NAMED_INGRESS + "---" + CNP_NAMED_EGRESS + """---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: mixed, namespace: default}
spec:
  endpointSelector: {}
  ingress:
  - icmps: [{fields: [{type: 8}]}]
  - toPorts: [{ports: [{port: "5000", protocol: SCTP}]}]
  egress:
  - toServices: [{k8sService: {serviceName: db, namespace: default}}]
"""
    got = rule_features(policies(text))
    assert got == {"named_ports": 2, "sctp": 1, "icmp": 1, "server_names": 0, "to_services": 1, "http": 0, "host": 0}


def test_an_any_peer_named_port_admits_each_server_on_its_own_number_and_never_the_world():
    """A tenant's pod that calls its port 22 `http` opens 22 towards itself,
    not towards the world for every rule that names `http`."""
    text = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toPorts: [{ports: [{port: http}]}]
"""
    c = compiler(text, ep(1, {"app": "client"}), ep(2, {"app": "b"}, ("http", TCP, 8080)), ep(3, {"app": "sneaky"}, ("http", TCP, 22)))
    assert allowed(c, 1, 2, OUT, TCP, 8080) and not allowed(c, 1, 2, OUT, TCP, 22)
    assert allowed(c, 1, 3, OUT, TCP, 22) and not allowed(c, 1, 3, OUT, TCP, 8080)
    assert not allowed(c, 1, None, OUT, TCP, 22), "a pod's port name opened the world"
    assert not allowed(c, 1, None, OUT, TCP, 8080)


def test_an_egress_named_port_resolves_against_another_nodes_pod_by_what_it_published():
    remote = IPv4Address("10.1.0.5")
    c = compiler(CNP_NAMED_EGRESS, ep(1, {"app": "client"}))
    labels = frozenset({"k8s:tier=backend", "k8s:io.kubernetes.pod.namespace=default"})
    c.set_remote({remote: (70000, labels)}, [], None, {remote: (("http", 6, 5432),)})
    state = c.compile()
    assert lookup(state.endpoints[1], 70000, OUT, TCP, 5432).allowed
    assert not lookup(state.endpoints[1], 70000, OUT, TCP, 80).allowed
    c.set_remote({remote: (70000, labels)}, [], None, {})
    assert not lookup(c.compile().endpoints[1], 70000, OUT, TCP, 5432).allowed, "a name the pod no longer serves still admitted"
