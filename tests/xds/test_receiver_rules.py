"""Egress listeners also carry the local receivers' ingress HTTP rules.

When a sender's egress and a receiver's ingress both redirect a flow, the
kernel hands it to the sender's egress proxy only, so that listener's second
RBAC filter enforces the receiver's rules for this sender (both must admit a
request). Decoded with envoy-data-plane's classes; the real Envoy proves the
verdicts in test_receiver_rules_enforced_by_envoy and end to end in
tests/agent/test_l7_both_sides.py."""

from __future__ import annotations

import httpx
import pytest
from envoy_data_plane.envoy.config.listener.v3 import Listener
from envoy_data_plane.envoy.config.route.v3 import RouteConfiguration
from envoy_data_plane.envoy.extensions.filters.http.rbac.v3 import RbacPerRoute
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpConnectionManagerPathWithEscapedSlashesAction,
)

from policy.compiled import HTTPRule, L7PeerRule, Verdict
from tests.xds.conftest import free_port
from tests.xds.fixtures import EGRESS_PORT, THIRD, forwarding_route, sender_and_receiver
from xds.render import RECEIVER_RBAC_FILTER, Renderer, RenderParams
from xds.resources import LISTENER, ROUTE

_state = sender_and_receiver


def _receiver_policies(snap) -> dict:
    rc = RouteConfiguration.parse(snap.of(ROUTE)[f"ciliate-proxy-{EGRESS_PORT}"].body)
    cfg = forwarding_route(rc).typed_per_filter_config[RECEIVER_RBAC_FILTER]
    return RbacPerRoute.parse(cfg.value).rbac.rules.to_dict().get("policies", {})


def test_egress_listener_carries_the_receivers_ingress_rules_for_this_sender():
    pols = _receiver_policies(Renderer().render(_state()))
    assert set(pols) == {"other-destinations", "receiver-2"}
    others = pols["other-destinations"]["permissions"][0]["notRule"]["orRules"]["rules"]
    assert others == [{"destinationIp": {"addressPrefix": "10.0.0.2", "prefixLen": 32}}]
    both = pols["receiver-2"]["permissions"][0]["andRules"]["rules"]
    assert both[0] == {"destinationIp": {"addressPrefix": "10.0.0.2", "prefixLen": 32}}
    assert "/public(/.*)?" in str(both[1])


def test_receiver_admitting_no_request_from_the_sender_denies_all_to_it():
    st = _state(receiver_rules=(L7PeerRule(frozenset({THIRD}), HTTPRule(path="/x")),))
    assert set(_receiver_policies(Renderer().render(st))) == {"other-destinations"}


def test_receiver_that_does_not_redirect_this_sender_adds_no_constraint():
    pols = _receiver_policies(Renderer().render(_state(receiver_verdict=Verdict.ALLOW)))
    assert pols == {"other-destinations": {"permissions": [{"any": True}], "principals": [{"any": True}]}}


def test_every_listener_normalizes_paths_and_rejects_escaped_slashes():
    snap = Renderer().render(_state())
    for lis in snap.of(LISTENER).values():
        hcm = HttpConnectionManager.parse(Listener.parse(lis.body).filter_chains[0].filters[-1].typed_config.value)
        assert hcm.normalize_path is True and hcm.merge_slashes is True
        assert hcm.path_with_escaped_slashes_action == HttpConnectionManagerPathWithEscapedSlashesAction.REJECT_REQUEST
        names = [f.name for f in hcm.http_filters]
        egress = Listener.parse(lis.body).traffic_direction == 2
        assert names[-1] == "envoy.filters.http.router"
        assert (RECEIVER_RBAC_FILTER in names) == egress


@pytest.mark.envoy
async def test_receiver_rules_enforced_by_envoy(envoy_rig):
    """The receiver is 127.0.0.1 (the loopback listener's local address stands
    for the original destination): GET is all the sender's egress allows,
    GET /public/... all the receiver's ingress allows this sender."""
    rig = await envoy_rig()
    port = free_port()
    st = _state(receiver_ip="127.0.0.1", egress_port=port)
    await rig.publish(st)
    await rig.envoy.wait_ready()
    async with httpx.AsyncClient() as client:
        got = {(m, p): (await rig.get(client, port, p, method=m)).status_code for m, p in
               [("GET", "/public/a"), ("GET", "/private"), ("PUT", "/public/a")]}
    assert got == {("GET", "/public/a"): 200, ("GET", "/private"): 403, ("PUT", "/public/a"): 403}


def test_listener_serves_only_connections_to_the_policy_port():
    # A connection straight to the proxy port (local port = proxy port) matches
    # no filter chain and is closed; a redirected one keeps its original port.
    snap = Renderer().render(_state())
    for lis in snap.of(LISTENER).values():
        chain = Listener.parse(lis.body).filter_chains[0]
        assert chain.filter_chain_match is not None and chain.filter_chain_match.destination_port == 80
    loop = Renderer(RenderParams.test_only_loopback()).render(_state())
    assert all(Listener.parse(lis.body).filter_chains[0].filter_chain_match is None for lis in loop.of(LISTENER).values())
