"""Rendering an audited endpoint's listeners (policy audit mode): its RBAC
rules become shadow rules behind an allow-all, on its own RBAC filter (never on
the receivers' filter of its egress listener), and turning audit on or off re-renders the route config."""

from __future__ import annotations

from dataclasses import replace

from envoy_data_plane.envoy.config.route.v3 import RouteConfiguration
from envoy_data_plane.envoy.extensions.filters.http.rbac.v3 import RbacPerRoute

from policy.compiled import CompiledState, Direction
from tests.xds.fixtures import CLIENT_IDENTITY, forwarding_route, rule, state
from xds.rbac import AUDIT_ALLOW_ALL, RBAC_FILTER
from xds.render import RECEIVER_RBAC_FILTER, Renderer, RenderParams
from xds.resources import ROUTE

PORT = 15001
NAME = f"ciliate-proxy-{PORT}"


def _audited(s: CompiledState) -> CompiledState:
    return replace(s, endpoints={i: replace(ep, audit=True) for i, ep in s.endpoints.items()})


def _per_route(snap, filter_name: str = RBAC_FILTER):
    rc = RouteConfiguration.parse(snap.of(ROUTE)[NAME].body)
    return RbacPerRoute.parse(forwarding_route(rc).typed_per_filter_config[filter_name].value).rbac


def test_audited_listener_allows_all_and_keeps_its_rules_as_shadow_rules():
    enforcing = state({PORT: (rule([CLIENT_IDENTITY], method="GET", path="/ok"),)})
    r = Renderer(RenderParams())
    plain = _per_route(r.render(enforcing))
    audited = _per_route(r.render(_audited(enforcing)))
    assert list(audited.rules.policies) == [AUDIT_ALLOW_ALL]
    assert audited.rules.policies[AUDIT_ALLOW_ALL].to_dict() == {"permissions": [{"any": True}], "principals": [{"any": True}]}
    assert audited.shadow_rules.to_dict() == plain.rules.to_dict()
    assert plain.shadow_rules is None
    # Audit off again: enforced as before (the cached route is not reused).
    assert _per_route(r.render(enforcing)).to_dict() == plain.to_dict()


def test_an_audited_sender_relaxes_only_its_own_rules_never_the_receivers():
    from tests.xds.fixtures import EGRESS_PORT, sender_and_receiver

    st = sender_and_receiver()
    st = replace(st, endpoints={**st.endpoints, 1: replace(st.endpoints[1], audit=True)})
    rc = RouteConfiguration.parse(Renderer(RenderParams()).render(st).of(ROUTE)[f"ciliate-proxy-{EGRESS_PORT}"].body)
    cfgs = forwarding_route(rc).typed_per_filter_config
    own = RbacPerRoute.parse(cfgs[RBAC_FILTER].value).rbac
    assert list(own.rules.policies) == [AUDIT_ALLOW_ALL] and own.shadow_rules is not None
    receiver = RbacPerRoute.parse(cfgs[RECEIVER_RBAC_FILTER].value).rbac
    # The receiver's ingress rules stay enforced: no allow-all, no shadow.
    assert set(receiver.rules.policies) == {"other-destinations", "receiver-2"}
    assert AUDIT_ALLOW_ALL not in receiver.rules.policies and receiver.shadow_rules is None


def test_audited_receiver_alone_passes_requests_to_it_and_shadows_its_rules():
    from tests.xds.fixtures import EGRESS_PORT, sender_and_receiver

    st = sender_and_receiver()
    st = replace(st, endpoints={**st.endpoints, 2: replace(st.endpoints[2], audit=True)})
    rc = RouteConfiguration.parse(Renderer(RenderParams()).render(st).of(ROUTE)[f"ciliate-proxy-{EGRESS_PORT}"].body)
    cfgs = forwarding_route(rc).typed_per_filter_config
    receiver = RbacPerRoute.parse(cfgs[RECEIVER_RBAC_FILTER].value).rbac
    assert set(receiver.rules.policies) == {"other-destinations", "receiver-2", "audit-receiver-2"}
    assert set(receiver.shadow_rules.policies) == {"other-destinations", "receiver-2"}
    # The sender is not audited: its own filter still enforces.
    assert RbacPerRoute.parse(cfgs[RBAC_FILTER].value).rbac.shadow_rules is None
