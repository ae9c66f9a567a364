"""SNI listeners as rendered: decoded back with envoy-data-plane's classes.
What they enforce is proven by the real Envoy in test_envoy_sni.py; these
pin the shape (filter order, matchers per wildcard kind, the receivers'
filter, audit, production's original destination) and the caching."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

import pytest
from envoy_data_plane.envoy.config.listener.v3 import Listener
from envoy_data_plane.envoy.extensions.filters.network.rbac.v3 import Rbac as NetworkRbac
from envoy_data_plane.envoy.extensions.filters.network.set_filter_state.v3 import Config as SetFilterState
from envoy_data_plane.envoy.extensions.filters.network.tcp_proxy.v3 import TcpProxy, UpstreamConnectMode

from policy.compiled import (
    ANY_CONNECTION,
    IDENTITY_WORLD,
    CompiledState,
    Direction,
    EndpointPolicy,
    HTTPRule,
    L7Kind,
    L7PeerRule,
    L7Policy,
    PolicyEntry,
    PolicyKey,
    PortRange,
    Protocol,
    RedirectKey,
    SNIRule,
    Verdict,
    lookup,
)
from policy.server_names import matches
from tests.xds.fixtures import CLIENT_IDENTITY, ipcache
from xds.errors import RenderError
from xds.render import RECEIVER_RBAC_FILTER, Renderer, RenderParams
from xds.resources import LISTENER, ROUTE

PORT = 15001
NAME = f"ciliate-proxy-{PORT}"


def sni_state(rules, direction=Direction.INGRESS, audit=False) -> CompiledState:
    pol = L7Policy(RedirectKey(1, direction, 443), PORT, tuple(rules), L7Kind.SNI)
    ep = EndpointPolicy(1, 2000, IPv4Address("10.0.0.1"), True, True, (), (pol,), audit=audit)
    return CompiledState(1, {1: ep}, ipcache())


def names(idents, *server_names):
    return L7PeerRule(frozenset(idents), None, (), SNIRule(server_names) if server_names else ANY_CONNECTION)


def listener(st, **params) -> Listener:
    snap = Renderer(RenderParams(**params)).render(st)
    assert NAME not in snap.of(ROUTE)  # no HTTP, no route configuration
    return Listener.parse(snap.of(LISTENER)[NAME].body)


def test_filter_order_and_tcp_proxy_waits_for_the_clients_bytes():
    lst = listener(sni_state([names([CLIENT_IDENTITY], "api.example.com")]))
    assert [f.name for f in lst.listener_filters] == ["envoy.filters.listener.tls_inspector", "envoy.filters.listener.original_src"]
    chain = lst.filter_chains[0]
    assert chain.filter_chain_match.destination_port == 443
    assert [f.name for f in chain.filters] == [
        "envoy.filters.network.connection_limit",
        "envoy.filters.network.rbac",
        "envoy.filters.network.set_filter_state",
        "envoy.filters.network.tcp_proxy",
    ]
    tcp = TcpProxy.parse(chain.filters[-1].typed_config.value)
    assert tcp.cluster == "ciliate-original-dst"
    # The upstream is connected only after the RBAC filter judged the first bytes.
    assert tcp.upstream_connect_mode == UpstreamConnectMode.ON_DOWNSTREAM_DATA and tcp.max_early_data_bytes
    state = SetFilterState.parse(chain.filters[-2].typed_config.value).on_new_connection[0]
    assert state.object_key == "envoy.network.transport_socket.original_dst_address"
    assert state.format_string.text_format_source.inline_string == "%DOWNSTREAM_LOCAL_ADDRESS%"


def _rbac(lst: Listener, name="envoy.filters.network.rbac") -> NetworkRbac:
    (f,) = [f for f in lst.filter_chains[0].filters if f.name == name]
    return NetworkRbac.parse(f.typed_config.value)


@pytest.mark.parametrize("pattern,want", [
    ("api.example.com", {"exact": "api.example.com", "ignoreCase": True}),
    ("*.example.org", {"safeRegex": {"regex": r"(?i)[^.]+\.example\.org"}}),
    ("**.example.net", {"safeRegex": {"regex": r"(?i)[^.]+(?:\.[^.]+)*\.example\.net"}}),
])
def test_names_become_requested_server_name_matchers_anded_with_the_peer(pattern, want):
    rbac = _rbac(listener(sni_state([names([CLIENT_IDENTITY], pattern)])))
    (pol,) = rbac.rules.to_dict()["policies"].values()
    assert pol["permissions"] == [{"requestedServerName": want}]
    assert pol["principals"] == [{"orIds": {"ids": [{"directRemoteIp": {"addressPrefix": "127.0.0.1", "prefixLen": 32}}]}}]


@pytest.mark.parametrize("pattern,name", [
    ("*.example.org", "x.example.org"), ("*.example.org", "x.y.example.org"), ("*.example.org", "example.org"),
    ("**.example.net", "a.b.example.net"), ("**.example.net", "example.net"), ("**.example.net", "aexample.net"),
])
def test_rendered_wildcard_regex_agrees_with_the_reference(pattern, name):
    import re2

    rbac = _rbac(listener(sni_state([names([CLIENT_IDENTITY], pattern)])))
    (pol,) = rbac.rules.to_dict()["policies"].values()
    regex = pol["permissions"][0]["requestedServerName"]["safeRegex"]["regex"]
    assert bool(re2.fullmatch(regex, name)) is matches(pattern, name)


def test_any_connection_is_any_permission_and_audit_makes_shadow_rules():
    st = sni_state([names([CLIENT_IDENTITY]), names([IDENTITY_WORLD], "a.example.com")], audit=True)
    rbac = _rbac(listener(st))
    assert list(rbac.rules.to_dict()["policies"]) == ["audit-allow-all"]
    shadow = rbac.shadow_rules.to_dict()["policies"]
    assert {"any": True} in [p for pol in shadow.values() for p in pol["permissions"]]


def test_egress_listener_enforces_the_receivers_names_too():
    """Sender (endpoint 1, 10.0.0.1) egress SNI on 443; receiver (endpoint 2,
    10.0.0.2) ingress SNI on 443 admitting the sender for b.example.com
    only: the sender's listener gets a second filter for it."""
    sender = EndpointPolicy(
        1, 2000, IPv4Address("10.0.0.1"), False, True,
        (PolicyEntry(PolicyKey(0, Direction.EGRESS, Protocol.TCP, PortRange(443, 443)), Verdict.REDIRECT, PORT),),
        (L7Policy(RedirectKey(1, Direction.EGRESS, 443), PORT, (names([0], "a.example.com", "b.example.com"),), L7Kind.SNI),),
    )
    receiver = EndpointPolicy(
        2, 3000, IPv4Address("10.0.0.2"), True, False,
        (PolicyEntry(PolicyKey(2000, Direction.INGRESS, Protocol.TCP, PortRange(443, 443)), Verdict.REDIRECT, PORT + 1),),
        (L7Policy(RedirectKey(2, Direction.INGRESS, 443), PORT + 1, (names([2000], "b.example.com"),), L7Kind.SNI),),
    )
    st = CompiledState(1, {1: sender, 2: receiver}, {
        IPv4Network("0.0.0.0/0"): IDENTITY_WORLD, IPv4Network("10.0.0.1/32"): 2000, IPv4Network("10.0.0.2/32"): 3000,
    })
    assert lookup(receiver, 2000, Direction.INGRESS, Protocol.TCP, 443).verdict == Verdict.REDIRECT
    rbac = _rbac(listener(st), RECEIVER_RBAC_FILTER)
    policies = rbac.rules.to_dict()["policies"]
    assert set(policies) == {"other-destinations", "receiver-2"}
    assert "b.example.com" in str(policies["receiver-2"]) and "a.example.com" not in str(policies["receiver-2"])
    # An HTTP receiver can only be honoured as "everything" by an SNI
    # listener, which reads no HTTP: GET-only rules admit no connection.
    http_receiver = replace(receiver, l7=(L7Policy(RedirectKey(2, Direction.INGRESS, 443), PORT + 1,
                                                   (L7PeerRule(frozenset({2000}), HTTPRule(method="GET")),)),))
    (got,) = replace(st, endpoints={1: sender, 2: http_receiver}).receiver_rules(sender.l7[0])
    assert got.sni == () and got.http == ()
    rbac = _rbac(listener(replace(st, endpoints={1: sender, 2: http_receiver})), RECEIVER_RBAC_FILTER)
    assert set(rbac.rules.to_dict()["policies"]) == {"other-destinations"}


def test_test_only_loopback_needs_an_upstream_and_uses_it():
    st = sni_state([names([CLIENT_IDENTITY], "api.example.com")])
    with pytest.raises(RenderError, match="test_only_tcp_upstream"):
        Renderer(RenderParams.test_only_loopback()).render(st)
    snap = Renderer(RenderParams.test_only_loopback(test_only_tcp_upstream="127.0.0.1:9")).render(st)
    lst = Listener.parse(snap.of(LISTENER)[NAME].body)
    state = SetFilterState.parse(lst.filter_chains[0].filters[-2].typed_config.value).on_new_connection[0]
    assert state.format_string.text_format_source.inline_string == "127.0.0.1:9"


def test_unchanged_sni_listener_is_reused_and_a_rule_change_replaces_it():
    r = Renderer(RenderParams())
    st = sni_state([names([CLIENT_IDENTITY], "api.example.com")])
    a = r.render(st).of(LISTENER)[NAME]
    assert r.render(replace(st, revision=2)).of(LISTENER)[NAME] is a
    b = r.render(sni_state([names([CLIENT_IDENTITY], "other.example.com")])).of(LISTENER)[NAME]
    assert b.body != a.body


def test_a_listener_holds_one_kind_of_rule():
    with pytest.raises(ValueError, match="sni listener"):
        L7Policy(RedirectKey(1, Direction.INGRESS, 443), PORT, (L7PeerRule(frozenset({1}), HTTPRule()),), L7Kind.SNI)
