"""The compiled state's guarantees (compiled.py) and the compiler's
incremental behaviour: what redirect/, xds/ and the agent rely on."""

from __future__ import annotations

from collections import defaultdict
from ipaddress import IPv4Address, IPv4Network

import pytest
from policytest_helpers import policies

from policy.compiled import (
    ALLOW_ALL_HTTP,
    PROXY_PORT_MAX,
    PROXY_PORT_MIN,
    Direction,
    Protocol,
    RedirectKey,
    Verdict,
    lookup,
)
from policy.compiler import Compiler, compile_state
from policy.endpoint import Endpoint
from policy.identity import FIRST_CIDR_IDENTITY, IDENTITY_ANY, IDENTITY_HOST, IDENTITY_WORLD, IdentityAllocator
from policy.proxyports import ProxyPortAllocator, ProxyPortsExhausted

WEB = Endpoint(1, {"app": "web"}, IPv4Address("10.0.0.1"))
CLIENT = Endpoint(2, {"app": "client"}, IPv4Address("10.0.0.2"))
OTHER = Endpoint(3, {"app": "other"}, IPv4Address("10.0.0.3"))


def cnp(name: str, spec: str) -> str:
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    return f"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n{body}\n---\n"


OVERLAP = (
    cnp("a", "endpointSelector: {matchLabels: {app: web}}\ningress:\n- fromEndpoints: [{matchLabels: {app: client}}]\n  toPorts: [{ports: [{port: '80', endPort: 100, protocol: TCP}]}]\n")
    + cnp("b", "endpointSelector: {matchLabels: {app: web}}\ningress:\n- fromEndpoints: [{matchLabels: {app: client}}]\n  toPorts: [{ports: [{port: '90', protocol: TCP}], rules: {http: [{method: GET}]}}]\n")
    + cnp("c", "endpointSelector: {matchLabels: {app: web}}\ningressDeny:\n- fromEndpoints: [{matchLabels: {app: client}}]\n  toPorts: [{ports: [{port: '95', endPort: 120, protocol: TCP}]}]\n")
)


def test_entries_are_disjoint_and_verdicts_merged():
    st = compile_state(policies(OVERLAP), [WEB, CLIENT])
    web = st.endpoints[1]
    client_id = st.endpoints[2].identity
    spans = [(e.key.ports.lo, e.key.ports.hi, e.verdict) for e in web.entries if e.key.identity == client_id]
    assert spans == [(80, 89, Verdict.ALLOW), (90, 90, Verdict.REDIRECT), (91, 94, Verdict.ALLOW), (95, 120, Verdict.DENY)]
    groups = defaultdict(list)
    for e in web.entries:
        groups[(e.key.identity, e.key.direction, e.key.protocol)].append(e.key.ports)
    for ranges in groups.values():
        ranges.sort()
        assert all(a.hi < b.lo for a, b in zip(ranges, ranges[1:]))
    assert list(web.entries) == sorted(web.entries, key=lambda e: e.key)


def test_redirect_carries_allocated_proxy_port_and_peer_gets_allow_all_http():
    ports = ProxyPortAllocator()
    st = compile_state(policies(OVERLAP), [WEB, CLIENT], proxy_ports=ports)
    web = st.endpoints[1]
    redirect = [e for e in web.entries if e.verdict == Verdict.REDIRECT]
    assert len(redirect) == 1
    key = RedirectKey(1, Direction.INGRESS, 90)
    assert redirect[0].proxy_port == ports.port_of(key)
    assert PROXY_PORT_MIN <= redirect[0].proxy_port <= PROXY_PORT_MAX
    (l7,) = web.l7
    assert l7.key == key and l7.proxy_port == redirect[0].proxy_port
    client_id = st.endpoints[2].identity
    # client has an L4 allow on 80-100 covering 90, so it may do any HTTP there
    assert {(r.http, frozenset(r.identities)) for r in l7.peer_rules} >= {(ALLOW_ALL_HTTP, frozenset({client_id}))}


def test_l7_with_protocol_any_redirects_tcp_only():
    text = cnp("a", "endpointSelector: {matchLabels: {app: web}}\ningress:\n- toPorts: [{ports: [{port: '80', protocol: ANY}], rules: {http: [{}]}}]\n")
    web = compile_state(policies(text), [WEB], allow_localhost=False).endpoints[1]
    assert [(e.key.identity, e.key.protocol, e.verdict) for e in web.entries] == [(IDENTITY_ANY, Protocol.TCP, Verdict.REDIRECT)]


def test_ipcache_world_endpoints_host_and_cidrs():
    text = cnp("a", "endpointSelector: {matchLabels: {app: web}}\negress:\n- toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]\n- toCIDR: [10.1.0.0/16]\n")
    ids = IdentityAllocator()
    st = compile_state(policies(text), [WEB], identities=ids, host_ips=[IPv4Address("192.168.1.1")])
    ip = st.ipcache
    assert ip[IPv4Network("0.0.0.0/0")] == IDENTITY_WORLD
    assert ip[IPv4Network("10.0.0.1/32")] == st.endpoints[1].identity
    assert ip[IPv4Network("192.168.1.1/32")] == IDENTITY_HOST
    cidr_ids = {n: ip[IPv4Network(n)] for n in ("10.0.0.0/8", "10.96.0.0/12", "10.1.0.0/16")}
    assert all(i >= FIRST_CIDR_IDENTITY for i in cidr_ids.values()) and len(set(cidr_ids.values())) == 3
    # The /16 carries the enclosing /8 so the /8 allow still applies after LPM.
    assert st.identity_labels[cidr_ids["10.1.0.0/16"]] >= {"cidr:10.0.0.0/8", "cidr:10.1.0.0/16", "reserved:world"}
    allowed = {e.key.identity for e in st.endpoints[1].entries if e.verdict == Verdict.ALLOW}
    assert allowed == {cidr_ids["10.0.0.0/8"], cidr_ids["10.1.0.0/16"]}  # not the except prefix


def test_selected_by_and_endpoints_of_policy():
    text = cnp("a", "endpointSelector: {matchLabels: {app: web}}\ningress: [{}]\n") + cnp("b", "endpointSelector: {}\negress: [{}]\n")
    c = Compiler()
    for p in policies(text):
        c.upsert_policy(p)
    for ep in (WEB, CLIENT):
        c.upsert_endpoint(ep)
    st = c.compile()
    assert st.endpoints[1].selected_by == {"default/a", "default/b"}
    assert st.endpoints[2].selected_by == {"default/b"}
    assert c.endpoints_of_policy("CiliumNetworkPolicy/default/a") == {1}
    assert c.endpoints_of_policy("CiliumNetworkPolicy/default/b") == {1, 2}


def test_incremental_changes_only_affected_endpoints_and_bumps_revision():
    ps = policies(cnp("a", "endpointSelector: {matchLabels: {app: web}}\ningress:\n- fromEndpoints: [{matchLabels: {app: client}}]\n"))
    c = Compiler()
    c.upsert_policy(ps[0])
    for ep in (WEB, CLIENT, OTHER):
        c.upsert_endpoint(ep)
    s1 = c.compile()
    assert c.changed_endpoints() == {1, 2, 3}
    assert c.compile() is s1 and c.changed_endpoints() == frozenset()
    # A new client-labelled endpoint with a new address: web's entries are
    # per identity, so only the new endpoint itself changes.
    c.upsert_endpoint(Endpoint(4, {"app": "client"}, IPv4Address("10.0.0.4")))
    s2 = c.compile()
    assert c.changed_endpoints() == {4} and s2.revision == s1.revision + 1
    # A new identity that the policy's peer selector matches changes web only.
    c.upsert_endpoint(Endpoint(5, {"app": "client", "v": "2"}, IPv4Address("10.0.0.5")))
    c.compile()
    assert c.changed_endpoints() == {1, 5}
    c.delete_policy("CiliumNetworkPolicy/default/a")
    c.compile()
    assert c.changed_endpoints() == {1}
    c.delete_endpoint(3)
    s3 = c.compile()
    assert c.changed_endpoints() == {3} and 3 not in s3.endpoints


def test_proxy_port_released_when_redirect_goes_away():
    l7 = policies(cnp("a", "endpointSelector: {matchLabels: {app: web}}\ningress:\n- toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{}]}}]\n"))
    ports = ProxyPortAllocator()
    c = Compiler(proxy_ports=ports)
    c.upsert_policy(l7[0])
    c.upsert_endpoint(WEB)
    c.compile()
    key = RedirectKey(1, Direction.INGRESS, 80)
    assert ports.port_of(key) is not None
    c.delete_policy(l7[0].key)
    c.compile()
    assert ports.port_of(key) is None


def test_unselected_endpoint_is_not_enforced():
    st = compile_state([], [WEB])
    assert (st.endpoints[1].ingress_enforced, st.endpoints[1].egress_enforced, st.endpoints[1].entries) == (False, False, ())


@pytest.mark.parametrize(
    "entity,expected",
    [
        pytest.param("host", {IDENTITY_HOST}, id="host"),
        pytest.param("all", {IDENTITY_ANY}, id="all"),
        pytest.param("world", {IDENTITY_WORLD}, id="world-without-cidrs"),
        pytest.param("cluster", {1, 3, 4, 5, 6, 7, 8, "web", "client"}, id="cluster"),
    ],
)
def test_entity_identities(entity, expected):
    text = cnp("a", f"endpointSelector: {{matchLabels: {{app: web}}}}\ningress:\n- fromEntities: [{entity}]\n")
    st = compile_state(policies(text), [WEB, CLIENT], allow_localhost=False)
    names = {st.endpoints[1].identity: "web", st.endpoints[2].identity: "client"}
    got = {names.get(e.key.identity, e.key.identity) for e in st.endpoints[1].entries}
    assert got == expected


def test_adjacent_redirected_ports_stay_separate_listeners():
    text = cnp("a", "endpointSelector: {matchLabels: {app: web}}\ningress:\n- fromEndpoints: [{matchLabels: {app: client}}]\n  toPorts:\n  - ports: [{port: '80', protocol: TCP}, {port: '81', protocol: TCP}]\n    rules: {http: [{method: GET}]}\n  - ports: [{port: '79', protocol: TCP}]\n")
    web = compile_state(policies(text), [WEB, CLIENT]).endpoints[1]
    redirects = [(e.key.ports.lo, e.key.ports.hi, e.proxy_port) for e in web.entries if e.verdict == Verdict.REDIRECT]
    assert [(lo, hi) for lo, hi, _ in redirects] == [(80, 80), (81, 81)]
    assert len({p for _, _, p in redirects}) == 2
    assert sorted((p.key.port, p.proxy_port) for p in web.l7) == sorted((lo, p) for lo, _, p in redirects)


def test_ports_saved_by_an_earlier_run_for_vanished_redirects_are_freed_by_the_first_compile():
    l7 = policies(cnp("a", "endpointSelector: {matchLabels: {app: web}}\ningress:\n- toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{}]}}]\n"))
    before = ProxyPortAllocator()
    stale = RedirectKey(99, Direction.INGRESS, 80)
    before.allocate(stale)
    kept = before.allocate(RedirectKey(1, Direction.INGRESS, 80))
    ports = ProxyPortAllocator.from_json(before.to_json())  # what the restarted agent loads
    c = Compiler(proxy_ports=ports)
    c.upsert_policy(l7[0])
    c.upsert_endpoint(WEB)
    st = c.compile()
    assert st.endpoints[1].l7[0].proxy_port == kept  # the restarted agent keeps the port Envoy listens on
    assert ports.items() == {RedirectKey(1, Direction.INGRESS, 80): kept}  # endpoint 99's port is free again


def test_stale_saved_ports_cannot_starve_the_first_compile():
    l7 = policies(cnp("a", "endpointSelector: {matchLabels: {app: web}}\ningress:\n- toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{}]}}]\n"))
    before = ProxyPortAllocator(lo=10000, hi=10001)
    before.allocate(RedirectKey(98, Direction.INGRESS, 80))
    before.allocate(RedirectKey(99, Direction.INGRESS, 80))
    ports = ProxyPortAllocator.from_json(before.to_json())
    ports.lo, ports.hi = 10000, 10001  # every port of the range held by a vanished redirect
    c = Compiler(proxy_ports=ports)
    c.upsert_policy(l7[0])
    c.upsert_endpoint(WEB)
    assert c.compile().endpoints[1].l7[0].proxy_port in (10000, 10001)


def test_running_out_of_proxy_ports_is_an_error_and_loses_nothing():
    text = cnp("a", "endpointSelector: {matchLabels: {app: web}}\ningress:\n- toPorts:\n  - ports: [{port: '80', protocol: TCP}, {port: '81', protocol: TCP}]\n    rules: {http: [{}]}\n")
    ports = ProxyPortAllocator(lo=10000, hi=10002)
    c = Compiler(proxy_ports=ports)
    c.upsert_endpoint(WEB)
    c.upsert_endpoint(Endpoint(5, {"app": "web"}, IPv4Address("10.0.0.5")))
    first = c.compile()
    c.upsert_policy(policies(text)[0])
    with pytest.raises(ProxyPortsExhausted):
        c.compile()  # two endpoints x two ports need four proxy ports
    assert c.state is first
    c.delete_endpoint(5)
    st = c.compile()
    assert c.changed_endpoints() == {1, 5}
    assert sorted(p.key.port for p in st.endpoints[1].l7) == [80, 81]


@pytest.mark.parametrize(
    "extra,allow_localhost,host_allowed",
    [
        pytest.param("", True, True, id="node-reaches-enforced-pod-by-default"),
        pytest.param("", False, False, id="allow-localhost-off"),
        pytest.param("ingressDeny:\n- fromEntities: [host]\n", True, False, id="explicit-host-deny-wins"),
    ],
)
def test_allow_localhost(extra, allow_localhost, host_allowed):
    """As Cilium's allow-localhost default: once a pod's ingress is enforced the
    node may still reach it (probes), unless a policy denies the host."""
    text = cnp("a", "endpointSelector: {matchLabels: {app: web}}\ningress:\n- fromEndpoints: [{matchLabels: {app: client}}]\n" + extra)
    st = compile_state(policies(text), [WEB, CLIENT], allow_localhost=allow_localhost)
    got = lookup(st.endpoints[1], IDENTITY_HOST, Direction.INGRESS, Protocol.TCP, 8080)
    assert got.allowed is host_allowed
    # Egress is untouched: the option never enforces or opens a direction.
    assert st.endpoints[1].egress_enforced is False
    unselected = compile_state([], [WEB], allow_localhost=allow_localhost).endpoints[1]
    assert unselected.entries == ()
