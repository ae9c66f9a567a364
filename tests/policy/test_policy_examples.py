"""The bundled examples load cleanly and do what their comments say; the
language corpus (named ports, SCTP, icmps, toServices, enableDefaultDeny,
port ranges, a clusterwide policy) compiles to what its comments say; the
policies in tests/policy/refused/ are refused, naming the field."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import pytest
from policytest_helpers import run_trace

from policy.compiled import Direction, PortRange, Protocol, lookup
from policy.compiler import Compiler
from policy.endpoint import Endpoint, NamedPort
from policy.load import load_paths, load_text
from policy.services import Service, ServiceCatalog, resolve_all

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_every_example_is_valid():
    res = load_paths([EXAMPLES])
    assert res.errors == []
    assert len(res.files) >= 10


def ex(name: str) -> str:
    return (EXAMPLES / name).read_text()


@pytest.mark.parametrize(
    "file,src,dst,port,proto,verdict",
    [
        pytest.param("cilium/l3-labels.yaml", "labels:role=frontend", "labels:role=backend", 5432, "TCP", "allowed", id="l3-frontend"),
        pytest.param("cilium/l3-labels.yaml", "labels:role=other", "labels:role=backend", 5432, "TCP", "denied", id="l3-other"),
        pytest.param("cilium/l4-ports.yaml", "labels:app=myService", "ip:1.1.1.1", 80, "TCP", "allowed", id="l4-80"),
        pytest.param("cilium/l4-ports.yaml", "labels:app=myService", "ip:1.1.1.1", 5005, "UDP", "allowed", id="l4-udp-range"),
        pytest.param("cilium/l4-ports.yaml", "labels:app=myService", "ip:1.1.1.1", 5005, "TCP", "denied", id="l4-tcp-not-in-range"),
        pytest.param("cilium/cidr-egress.yaml", "labels:app=myService", "ip:20.1.1.1", 443, "TCP", "allowed", id="cidr-host"),
        pytest.param("cilium/cidr-egress.yaml", "labels:app=myService", "ip:10.100.0.1", 443, "TCP", "denied", id="cidr-except"),
        pytest.param("cilium/cidr-egress.yaml", "labels:app=myService", "ip:10.1.0.1", 443, "TCP", "allowed", id="cidr-range"),
        pytest.param("cilium/entities.yaml", "entity:host", "labels:app=x", 8080, "TCP", "allowed", id="from-host"),
        pytest.param("cilium/entities.yaml", "labels:app=y", "labels:app=x", 8080, "TCP", "denied", id="not-from-peers"),
        pytest.param("cilium/entities.yaml", "labels:env=dev", "ip:93.184.216.34", 443, "TCP", "allowed", id="dev-to-world"),
        pytest.param("cilium/deny-world.yaml", "ip:93.184.216.34", "labels:app=internal", 443, "TCP", "denied", id="deny-world"),
        pytest.param("cilium/deny-world.yaml", "labels:app=web", "labels:app=internal", 443, "TCP", "allowed", id="cluster-allowed"),
        pytest.param("cilium/clusterwide.yaml", "labels:app=a,k8s:io.kubernetes.pod.namespace=shop",
                     "labels:k8s-app=kube-dns,k8s:io.kubernetes.pod.namespace=kube-system", 53, "UDP", "allowed", id="dns-any-ns"),
        pytest.param("cilium/clusterwide.yaml", "labels:app=a", "ip:8.8.8.8", 53, "UDP", "denied", id="dns-elsewhere"),
        pytest.param("kubernetes/default-deny.yaml", "labels:a=b", "labels:a=c,k8s:io.kubernetes.pod.namespace=prod", 80, "TCP",
                     "denied", id="np-default-deny"),
    ],
)
def test_example_behaves_as_documented(file, src, dst, port, proto, verdict):
    result, _ = run_trace(ex(file), src, dst, port, Protocol[proto])
    assert result.verdict == verdict, result.reason


# --- the language corpus: named ports, SCTP, ICMP, toServices, default deny, ranges, CCNP ---

IN, OUT = Direction.INGRESS, Direction.EGRESS
REFUSED = Path(__file__).resolve().parent / "refused"
CORPUS = ["cilium/named-ports.yaml", "cilium/sctp.yaml", "cilium/icmp.yaml", "cilium/to-services.yaml",
          "cilium/default-deny-off.yaml", "cilium/port-ranges.yaml", "cilium/clusterwide-guardrails.yaml",
          "kubernetes/named-ports.yaml", "kubernetes/sctp.yaml"]


def endpoint(i: int, labels: dict[str, str], *named: tuple[str, Protocol, int], ip: str | None = None) -> Endpoint:
    ports = tuple(NamedPort(n, p, num) for n, p, num in named)
    return Endpoint(i, labels, ip_address(ip or f"10.0.0.{i}"), named_ports=ports)


class Compiled:
    """One example file compiled with the given endpoints (and Services)."""

    def __init__(self, name: str, *eps: Endpoint, services: ServiceCatalog | None = None) -> None:
        res = load_text(ex(name), name)
        assert res.errors == [] and res.policies, [str(e) for e in res.errors]
        pols, _ = resolve_all(res.policies, services)
        self.compiler = Compiler()
        for p in pols:
            self.compiler.upsert_policy(p)
        for e in eps:
            self.compiler.upsert_endpoint(e)
        self.state = self.compiler.compile()

    def allowed(self, ep: int, peer: int | str, direction: Direction, proto: Protocol, port: int) -> bool:
        """`peer` is an endpoint id or an address outside the cluster."""
        ident = self.compiler.identity_of_endpoint(peer) if isinstance(peer, int) else self.state.identity_of(ip_address(peer))
        return lookup(self.state.endpoints[ep], ident, direction, proto, port).allowed


@pytest.mark.parametrize("name", CORPUS)
def test_every_corpus_file_is_accepted_and_compiles(name):
    c = Compiled(name, endpoint(1, {"app": "web"}), endpoint(2, {"role": "api"}))
    assert c.state.endpoints


def test_named_ports_resolve_per_destination_pod():
    c = Compiled("cilium/named-ports.yaml",
                 endpoint(1, {"app": "catalog"}, ("http", Protocol.TCP, 8080)),
                 endpoint(2, {"app": "catalog", "shard": "b"}, ("http", Protocol.TCP, 9000)),
                 endpoint(3, {"app": "storefront"}),
                 endpoint(4, {"app": "catalog", "shard": "c"}))  # serves no "http"
    assert c.allowed(1, 3, IN, Protocol.TCP, 8080) and not c.allowed(1, 3, IN, Protocol.TCP, 9000)
    assert c.allowed(2, 3, IN, Protocol.TCP, 9000) and not c.allowed(2, 3, IN, Protocol.TCP, 8080)
    assert c.allowed(3, 1, OUT, Protocol.TCP, 8080) and not c.allowed(3, 1, OUT, Protocol.TCP, 9000)
    assert c.allowed(3, 2, OUT, Protocol.TCP, 9000) and not c.allowed(3, 2, OUT, Protocol.TCP, 8080)
    assert c.state.endpoints[4].ingress_enforced and not c.allowed(4, 3, IN, Protocol.TCP, 8080)


def test_networkpolicy_named_ports_resolve_per_destination_pod():
    c = Compiled("kubernetes/named-ports.yaml",
                 endpoint(1, {"role": "api"}, ("web", Protocol.TCP, 8443)),
                 endpoint(2, {"role": "cache"}, ("redis", Protocol.TCP, 6380)),
                 endpoint(3, {"role": "other"}, ("redis", Protocol.TCP, 6380)))
    assert c.allowed(1, 3, IN, Protocol.TCP, 8443) and not c.allowed(1, 3, IN, Protocol.TCP, 80)
    assert c.allowed(1, 2, OUT, Protocol.TCP, 6380) and not c.allowed(1, 2, OUT, Protocol.TCP, 6379)
    assert not c.allowed(1, 3, OUT, Protocol.TCP, 6380), "egress went to a pod that is not role=cache"


@pytest.mark.parametrize("name,labels,peer_labels,port", [
    pytest.param("cilium/sctp.yaml", {"app": "signalling"}, {"app": "edge-proxy"}, 3868, id="cnp"),
    pytest.param("kubernetes/sctp.yaml", {"role": "sigtran"}, {"role": "gateway"}, 2905, id="networkpolicy"),
])
def test_sctp_is_enforced_by_port_and_only_for_sctp(name, labels, peer_labels, port):
    c = Compiled(name, endpoint(1, labels), endpoint(2, peer_labels), endpoint(3, {"app": "stranger"}))
    assert c.allowed(1, 2, IN, Protocol.SCTP, port)
    assert not c.allowed(1, 2, IN, Protocol.SCTP, port + 1)
    assert not c.allowed(1, 2, IN, Protocol.TCP, port) and not c.allowed(1, 2, IN, Protocol.UDP, port)
    assert not c.allowed(1, 3, IN, Protocol.SCTP, port)
    keys = [e.key for e in c.state.endpoints[1].entries if e.key.identity == c.compiler.identity_of_endpoint(2)]
    assert [(k.protocol, k.ports) for k in keys] == [(Protocol.SCTP, PortRange(port, port))]


def test_icmps_compile_to_entries_of_their_own_protocol_and_type():
    c = Compiled("cilium/icmp.yaml", endpoint(1, {"app": "web"}), endpoint(2, {"app": "prober"}))
    web = c.state.endpoints[1]
    peer = c.compiler.identity_of_endpoint(2)
    typed = sorted((e.key.protocol, e.key.ports) for e in web.entries if e.key.identity == peer and e.key.direction == IN)
    assert typed == [(Protocol.ICMP, PortRange(8, 8)), (Protocol.ICMPV6, PortRange(128, 128))]
    assert c.allowed(1, 2, IN, Protocol.ICMP, 8) and c.allowed(1, 2, IN, Protocol.ICMPV6, 128)
    assert not c.allowed(1, 2, IN, Protocol.ICMP, 13), "a type not listed passed"
    assert not c.allowed(1, 2, IN, Protocol.TCP, 8) and not c.allowed(1, 2, IN, Protocol.UDP, 8), "an ICMP type opened a port"
    # The prober: echo requests of both families out, IPv4 Timestamp (13) denied.
    assert c.allowed(2, 1, OUT, Protocol.ICMP, 8) and c.allowed(2, 1, OUT, Protocol.ICMPV6, 128)
    assert not c.allowed(2, 1, OUT, Protocol.ICMP, 13)
    prober = c.state.endpoints[2]
    assert any(e.key.protocol == Protocol.ICMP and e.key.ports == PortRange(13, 13) and e.verdict.name == "DENY"
               for e in prober.entries)


def test_toservices_reach_the_pods_and_addresses_behind_the_services():
    catalog = ServiceCatalog.of([
        Service("billing", "payments", {}, {"app": "payments"}),
        Service("infra", "redis", {"tier": "cache"}, {}, (ip_address("192.0.2.10"),)),
    ])
    c = Compiled("cilium/to-services.yaml", endpoint(1, {"app": "checkout"}),
                 endpoint(2, {"app": "payments", "io.kubernetes.pod.namespace": "billing"}),
                 endpoint(3, {"app": "payments"}),  # same labels, namespace default: not behind the Service
                 services=catalog)
    assert c.allowed(1, 2, OUT, Protocol.TCP, 8443) and not c.allowed(1, 2, OUT, Protocol.TCP, 6379)
    assert not c.allowed(1, 3, OUT, Protocol.TCP, 8443)
    assert c.allowed(1, "192.0.2.10", OUT, Protocol.TCP, 6379) and not c.allowed(1, "192.0.2.10", OUT, Protocol.TCP, 8443)
    assert not c.allowed(1, "192.0.2.11", OUT, Protocol.TCP, 6379)


def test_toservices_without_a_service_source_open_nothing():
    c = Compiled("cilium/to-services.yaml", endpoint(1, {"app": "checkout"}),
                 endpoint(2, {"app": "payments", "io.kubernetes.pod.namespace": "billing"}))
    assert c.state.endpoints[1].egress_enforced
    assert not c.allowed(1, 2, OUT, Protocol.TCP, 8443) and not c.allowed(1, "192.0.2.10", OUT, Protocol.TCP, 6379)


def test_enable_default_deny_false_adds_an_allow_without_isolating():
    c = Compiled("cilium/default-deny-off.yaml", endpoint(1, {"app": "legacy"}), endpoint(2, {"app": "metrics-scraper"}),
                 endpoint(3, {"app": "anyone"}))
    assert not c.state.endpoints[1].ingress_enforced
    assert c.allowed(1, 2, IN, Protocol.TCP, 9100) and c.allowed(1, 3, IN, Protocol.TCP, 5432)


def test_port_ranges_cover_their_ends_and_nothing_past_them():
    c = Compiled("cilium/port-ranges.yaml", endpoint(1, {"app": "media"}), endpoint(2, {"app": "player"}))
    world = "203.0.113.5"
    assert c.allowed(1, world, IN, Protocol.UDP, 10000) and c.allowed(1, world, IN, Protocol.UDP, 10999)
    assert not c.allowed(1, world, IN, Protocol.UDP, 11000) and not c.allowed(1, world, IN, Protocol.TCP, 10000)
    assert not c.allowed(1, world, IN, Protocol.TCP, 8005), "the control ports are for the cluster only"
    assert c.allowed(1, 2, IN, Protocol.TCP, 8000) and c.allowed(1, 2, IN, Protocol.TCP, 8010)
    assert not c.allowed(1, 2, IN, Protocol.TCP, 8011)


def test_the_clusterwide_guardrails_deny_ssh_from_outside_and_keep_icmp_errors_open():
    c = Compiled("cilium/clusterwide-guardrails.yaml",
                 endpoint(1, {"env": "prod", "io.kubernetes.pod.namespace": "shop"}),
                 endpoint(2, {"app": "x", "io.kubernetes.pod.namespace": "other"}))
    world = "203.0.113.5"
    assert not c.state.endpoints[1].ingress_enforced and not c.state.endpoints[2].ingress_enforced
    assert not c.allowed(1, world, IN, Protocol.TCP, 22), "the deny did not win"
    assert c.allowed(1, world, IN, Protocol.TCP, 443) and c.allowed(2, world, IN, Protocol.TCP, 22)
    for ep in (1, 2):
        mtu = [e for e in c.state.endpoints[ep].entries if e.key.protocol in (Protocol.ICMP, Protocol.ICMPV6)]
        assert sorted((e.key.protocol, e.key.ports) for e in mtu) == [(Protocol.ICMP, PortRange(3, 3)),
                                                                      (Protocol.ICMPV6, PortRange(2, 2))]


@pytest.mark.parametrize("name,field", [
    pytest.param("to-fqdns-deny.yaml", "spec.egressDeny[0].toFQDNs", id="toFQDNs-in-egressDeny"),
    pytest.param("kafka.yaml", "spec.ingress[0].toPorts[0].rules.kafka", id="kafka"),
    pytest.param("listener.yaml", "spec.egress[0].toPorts[0].listener", id="listener"),
    pytest.param("terminating-tls.yaml", "spec.egress[0].toPorts[0].terminatingTLS", id="terminatingTLS"),
])
def test_policies_using_refused_fields_are_refused_naming_the_field(name, field):
    res = load_text((REFUSED / name).read_text(), name)
    assert res.policies == []
    assert any(e.field == field and e.reason.startswith("not supported") for e in res.errors), [str(e) for e in res.errors]


def test_every_refused_file_is_exercised():
    exercised = {"to-fqdns-deny.yaml", "kafka.yaml", "listener.yaml", "terminating-tls.yaml"}
    assert {p.name for p in REFUSED.glob("*.yaml")} == exercised
