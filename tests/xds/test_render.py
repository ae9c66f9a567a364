"""Rendering compiled L7 state into Envoy resources: our wire encoding decoded
back with envoy-data-plane's betterproto classes, the RBAC semantics, the
render parameters, and content caching."""

from __future__ import annotations

from datetime import timedelta
from ipaddress import IPv4Network

import pytest
from envoy_data_plane.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType, ClusterLbPolicy
from envoy_data_plane.envoy.config.accesslog.v3 import ComparisonFilterOp
from envoy_data_plane.envoy.config.core.v3 import (
    ApiVersion,
    HeaderValueOptionHeaderAppendAction,
    SocketOptionSocketState,
    TrafficDirection,
)
from envoy_data_plane.envoy.config.listener.v3 import Listener
from envoy_data_plane.envoy.config.route.v3 import RouteConfiguration
from envoy_data_plane.envoy.config.rbac.v3 import RbacAction
from envoy_data_plane.envoy.extensions.access_loggers.grpc.v3 import HttpGrpcAccessLogConfig
from envoy_data_plane.envoy.extensions.filters.http.rbac.v3 import Rbac as RbacFilter
from envoy_data_plane.envoy.extensions.filters.http.rbac.v3 import RbacPerRoute
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import HttpConnectionManager
from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryResponse

from policy.compiled import IDENTITY_ANY, IDENTITY_WORLD, Direction
from policy.http_path import DOT_SEGMENT_WITH_PARAMS_REGEX
from tests.xds.fixtures import CLIENT_IDENTITY, EGRESS_PORT, OTHER_IDENTITY, forwarding_route, many_rules, rule, sender_and_receiver, state
from xds import serialize
from xds.errors import RenderError, SnapshotError
from xds.render import RECEIVER_RBAC_FILTER, Renderer, RenderParams
from xds.resources import CLUSTER, LISTENER, ROUTE, Resource
from xds.snapshot import Snapshot

PORT = 15001
NAME = f"ciliate-proxy-{PORT}"
ANYTHING_BUT_ABC = r"(?:|[^\x{61}].*|\x{61}(?:|[^\x{62}].*|\x{62}(?:|[^\x{63}].*|\x{63}.+)))"
HCM_TYPE = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def rbac_policies(snap, name=NAME) -> dict:
    rc = RouteConfiguration.parse(snap.of(ROUTE)[name].body)
    per_route = forwarding_route(rc).typed_per_filter_config["envoy.filters.http.rbac"]
    return RbacPerRoute.parse(per_route.value).rbac.rules.to_dict().get("policies", {})


@pytest.mark.parametrize(
    "http, want_rules",
    [
        pytest.param(
            dict(method="GET|HEAD"),
            [{"orRules": {"rules": [
                {"header": {"name": ":method", "stringMatch": {"exact": "GET"}}},
                {"header": {"name": ":method", "stringMatch": {"exact": "HEAD"}}},
            ]}}],
            id="method-alternation-of-literals-as-exact-matches",
        ),
        pytest.param(
            dict(method="P.*"),
            [{"header": {"name": ":method", "stringMatch": {"safeRegex": {"regex": "P.*"}}}}],
            id="method-regex",
        ),
        pytest.param(
            dict(method="DELETE", path="/static/file-1"),
            [
                {"header": {"name": ":method", "stringMatch": {"exact": "DELETE"}}},
                {"header": {"name": ":path", "stringMatch": {"exact": "/static/file-1"}}},
            ],
            id="literal-method-and-path-as-exact-matches",
        ),
        pytest.param(
            dict(path="/a/.*", host="x\\.example"),
            [
                {"header": {"name": ":path", "stringMatch": {"safeRegex": {"regex": "/a/.*"}}}},
                {"header": {"name": ":authority", "stringMatch": {"safeRegex": {"regex": "x\\.example"}}}},
            ],
            id="path-and-host-anded",
        ),
        pytest.param(
            dict(headers=(("x-token", "abc"), ("x-debug", None), ("x-empty", ""))),
            [
                # Exact: present, and no line of it holds anything else (a
                # header sent on several lines passes only if every line matches).
                {"header": {"name": "x-token", "stringMatch": {"exact": "abc"}}},
                {"notRule": {"header": {"name": "x-token", "stringMatch": {"safeRegex": {"regex": ANYTHING_BUT_ABC}}}}},
                {"header": {"name": "x-debug", "presentMatch": True}},
                {"header": {"name": "x-empty", "stringMatch": {"exact": ""}}},
                {"notRule": {"header": {"name": "x-empty", "stringMatch": {"safeRegex": {"regex": ".+"}}}}},
            ],
            id="headers-exact-presence-and-empty-value",
        ),
    ],
)
def test_http_rule_becomes_anded_header_permissions(http, want_rules):
    snap = Renderer().render(state({PORT: (rule([CLIENT_IDENTITY], **http),)}))
    pol = rbac_policies(snap)["peers-0"]
    assert pol["permissions"] == [{"andRules": {"rules": want_rules}}]


def test_rules_sharing_peers_become_one_policy_with_ored_permissions():
    snap = Renderer().render(state({PORT: (
        rule([CLIENT_IDENTITY], method="GET", path="/a"),
        rule([OTHER_IDENTITY], path="/b"),
        rule([CLIENT_IDENTITY], method="POST", path="/c"),
    )}))
    pols = rbac_policies(snap)
    assert len(pols) == 2
    paths = {
        k: [p["andRules"]["rules"][-1]["header"]["stringMatch"]["exact"] for p in v["permissions"]]
        for k, v in pols.items()
    }
    assert sorted(paths.values()) == [["/a", "/c"], ["/b"]]


def _path_matchers(pol) -> list:
    return [p["andRules"]["rules"][-1]["header"]["stringMatch"] for p in pol["permissions"]]


@pytest.mark.parametrize(
    "paths, want",
    [
        pytest.param(["/a", "/b/.*"], [{"safeRegex": {"regex": "(?:/a)|(?:/b/(?:.*))"}}], id="alternation"),
        pytest.param(
            ["/x/1(/.*)?", "/x/2(/.*)?"], [{"safeRegex": {"regex": "/x/(?:1|2)(?:(/.*)?)"}}], id="shared-tail-and-prefix-factored"
        ),
        pytest.param(["/a", "/a"], [{"exact": "/a"}], id="duplicates-collapse"),
        pytest.param(
            ["/ok/.*", "/bad((", "/fine"],
            [{"safeRegex": {"regex": "/bad(("}}, {"safeRegex": {"regex": "(?:/ok/(?:.*))|(?:/fine)"}}],
            id="invalid-regex-left-alone",
        ),
        pytest.param(
            ["/ok/.*", "x)|(?:.*"],
            [{"safeRegex": {"regex": "x)|(?:.*"}}, {"safeRegex": {"regex": "/ok/.*"}}],
            id="unbalanced-regex-cannot-widen-others",
        ),
    ],
)
def test_rules_differing_only_in_path_merge_into_one_regex(paths, want):
    rules = tuple(rule([CLIENT_IDENTITY], method="GET", path=p) for p in paths)
    (pol,) = rbac_policies(Renderer().render(state({PORT: rules}))).values()
    assert _path_matchers(pol) == want


def test_rule_without_path_absorbs_path_rules_with_the_same_other_fields():
    rules = (rule([CLIENT_IDENTITY], method="GET", path="/a"), rule([CLIENT_IDENTITY], method="GET"))
    (pol,) = rbac_policies(Renderer().render(state({PORT: rules}))).values()
    assert pol["permissions"] == [{"andRules": {"rules": [{"header": {"name": ":method", "stringMatch": {"exact": "GET"}}}]}}]


def test_rule_with_nothing_set_allows_any_request_from_its_peers():
    pol = rbac_policies(Renderer().render(state({PORT: (rule([CLIENT_IDENTITY]),)})))["peers-0"]
    assert pol["permissions"] == [{"any": True}]


@pytest.mark.parametrize(
    "idents, want",
    [
        pytest.param([IDENTITY_ANY], [{"any": True}], id="any-peer"),
        pytest.param(
            [CLIENT_IDENTITY, OTHER_IDENTITY],
            [{"orIds": {"ids": [
                {"directRemoteIp": {"addressPrefix": "127.0.0.1", "prefixLen": 32}},
                {"directRemoteIp": {"addressPrefix": "127.0.0.2", "prefixLen": 32}},
            ]}}],
            id="two-identities",
        ),
        pytest.param(
            [IDENTITY_WORLD],
            [{"orIds": {"ids": [{"andIds": {"ids": [
                {"directRemoteIp": {"addressPrefix": "0.0.0.0", "prefixLen": 0}},
                {"notId": {"orIds": {"ids": [
                    {"directRemoteIp": {"addressPrefix": "127.0.0.1", "prefixLen": 32}},
                    {"directRemoteIp": {"addressPrefix": "127.0.0.2", "prefixLen": 32}},
                ]}}},
            ]}}]}}],
            id="world-excludes-more-specific-prefixes",
        ),
    ],
)
def test_ingress_peers_are_source_address_principals(idents, want):
    pol = rbac_policies(Renderer().render(state({PORT: (rule(idents, path="/"),)})))["peers-0"]
    assert pol["principals"] == want


def test_egress_peers_are_destination_permissions():
    snap = Renderer().render(state({PORT: (rule([CLIENT_IDENTITY], path="/x"),)}, direction=Direction.EGRESS))
    pol = rbac_policies(snap)["peers-0"]
    assert pol["principals"] == [{"any": True}]
    assert pol["permissions"] == [{"andRules": {"rules": [
        {"orRules": {"rules": [
            {"andRules": {"rules": [{"header": {"name": ":path", "stringMatch": {"exact": "/x"}}}]}},
        ]}},
        {"orRules": {"rules": [{"destinationIp": {"addressPrefix": "127.0.0.1", "prefixLen": 32}}]}},
    ]}}]
    lst = Listener.parse(snap.of(LISTENER)[NAME].body)
    assert lst.traffic_direction.name == "OUTBOUND"


def test_identity_without_addresses_drops_the_rule_and_no_rules_deny_all():
    snap = Renderer().render(state({PORT: (rule([4242], path="/"),)}))
    assert rbac_policies(snap) == {}
    rc = RouteConfiguration.parse(snap.of(ROUTE)[NAME].body)
    per_route = RbacPerRoute.parse(forwarding_route(rc).typed_per_filter_config["envoy.filters.http.rbac"].value)
    assert per_route.rbac is not None and per_route.rbac.rules is not None, "ALLOW with no policy: deny all"


def test_listener_cluster_and_hcm_follow_render_params():
    snap = Renderer(RenderParams(upstream_mark=0x0B00)).render(state({PORT: (rule([CLIENT_IDENTITY]),)}))
    lst = Listener.parse(snap.of(LISTENER)[NAME].body)
    assert (lst.address.socket_address.address, lst.address.socket_address.port_value) == ("0.0.0.0", PORT)
    assert lst.transparent is True
    hcm = HttpConnectionManager.parse(lst.filter_chains[0].filters[-1].typed_config.value)
    assert hcm.rds.route_config_name == NAME and hcm.rds.config_source.ads is not None
    assert [f.name for f in hcm.http_filters] == ["envoy.filters.http.rbac", "envoy.filters.http.router"]
    mapper = hcm.local_reply_config.mappers[0]
    assert (mapper.filter.status_code_filter.comparison.value.default_value, mapper.body.inline_string) == (
        403,
        "Access denied",
    )
    (cl,) = [Cluster.parse(r.body) for r in snap.of(CLUSTER).values()]
    assert (cl.type, cl.lb_policy) == (ClusterDiscoveryType.ORIGINAL_DST, ClusterLbPolicy.CLUSTER_PROVIDED)
    (opt,) = cl.upstream_bind_config.socket_options
    assert (opt.level, opt.name, opt.int_value) == (1, 36, 0x0B00)
    # Production takes the upstream from the accepted socket's local address,
    # carried in an internal header that only Envoy writes (overwrite, so a
    # client-sent value never picks the upstream).
    assert (cl.original_dst_lb_config.use_http_header, cl.original_dst_lb_config.http_header_name) == (
        True,
        "x-ciliate-original-dst",
    )
    (rc,) = [RouteConfiguration.parse(r.body) for r in snap.of(ROUTE).values()]
    (added,) = rc.request_headers_to_add
    assert (added.header.key, added.header.value) == ("x-ciliate-original-dst", "%DOWNSTREAM_LOCAL_ADDRESS%")
    assert added.append_action == HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD


def test_test_only_params_bind_loopback_and_read_the_upstream_header():
    snap = Renderer(RenderParams.test_only_loopback()).render(state({PORT: (rule([CLIENT_IDENTITY]),)}))
    lst = Listener.parse(snap.of(LISTENER)[NAME].body)
    assert (lst.address.socket_address.address, lst.transparent) == ("127.0.0.1", False)
    (cl,) = [Cluster.parse(r.body) for r in snap.of(CLUSTER).values()]
    assert cl.original_dst_lb_config.use_http_header is True


def test_duplicate_proxy_port_is_a_clear_error():
    st = state({PORT: (rule([CLIENT_IDENTITY]),)})
    ep = st.endpoints[1]
    from dataclasses import replace

    st2 = replace(st, endpoints={1: ep, 2: replace(ep, endpoint_id=2)})
    with pytest.raises(RenderError) as e:
        Renderer().render(st2)
    assert "endpoints[2]" in e.value.field and "15001" in e.value.reason


def test_one_rule_change_reencodes_one_rule_and_reuses_other_listeners():
    r = Renderer()
    base = {15001: many_rules(200), 15002: many_rules(200)}
    first = r.render(state(base))
    # many_rules: one method, 7 distinct headers, distinct paths -> 7 merged
    # permissions, shared by both listeners (same content).
    assert r.http_rules_encoded == 7
    changed = dict(base)
    changed[15002] = base[15002][:-1] + (rule([CLIENT_IDENTITY], path="/new"),)
    second = r.render(state(changed))
    assert r.http_rules_encoded == 2  # the group that lost a path, and the new rule
    assert second.of(ROUTE)["ciliate-proxy-15001"] is first.of(ROUTE)["ciliate-proxy-15001"]
    assert second.of(LISTENER)["ciliate-proxy-15002"] is first.of(LISTENER)["ciliate-proxy-15002"]
    assert second.of(ROUTE)["ciliate-proxy-15002"].version != first.of(ROUTE)["ciliate-proxy-15002"].version
    assert second.version != first.version
    assert r.render(state(changed)).version == second.version, "same content, same version"


def test_ipcache_change_rerenders_principals():
    r = Renderer()
    a = r.render(state({PORT: (rule([CLIENT_IDENTITY]),)}))
    b = r.render(state({PORT: (rule([CLIENT_IDENTITY]),)}, extra_ipcache={IPv4Network("10.1.0.0/16"): CLIENT_IDENTITY}))
    assert a.of(ROUTE)[NAME].version != b.of(ROUTE)[NAME].version
    ids = rbac_policies(b)["peers-0"]["principals"][0]["orIds"]["ids"]
    assert {"directRemoteIp": {"addressPrefix": "10.1.0.0", "prefixLen": 16}} in ids


def test_snapshot_refuses_dangling_route_reference_and_duplicates():
    lst = Resource(LISTENER, "l", b"\x0a\x01l", refs=frozenset({(ROUTE, "missing")}))
    with pytest.raises(SnapshotError, match="missing"):
        Snapshot.build([lst])
    with pytest.raises(SnapshotError, match="duplicate"):
        Snapshot.build([Resource(ROUTE, "r", b"1"), Resource(ROUTE, "r", b"2")])


def _unpack(any_msg, cls, type_url):
    assert any_msg.type_url == type_url
    return cls.parse(any_msg.value)


def test_every_resource_kind_decodes_with_the_library_classes():
    """An egress listener with a receiver (both RBAC filters), its routes and
    the cluster, carried in a SotW discovery response, decoded field by field."""
    snap = Renderer().render(sender_and_receiver())
    got = {}
    for type_url, cls in ((LISTENER, Listener), (ROUTE, RouteConfiguration), (CLUSTER, Cluster)):
        resp = DiscoveryResponse.parse(serialize.discovery_response(snap.version, type_url, "n1", [r.body for r in snap.of(type_url).values()]))
        assert (resp.version_info, resp.type_url, resp.nonce) == (snap.version, type_url, "n1")
        got[type_url] = [_unpack(a, cls, type_url) for a in resp.resources]

    lst = next(x for x in got[LISTENER] if x.name == f"ciliate-proxy-{EGRESS_PORT}")
    assert (lst.address.socket_address.address, lst.address.socket_address.port_value) == ("0.0.0.0", EGRESS_PORT)
    assert (lst.transparent, lst.traffic_direction) == (True, TrafficDirection.OUTBOUND)
    (chain,) = lst.filter_chains
    assert chain.filter_chain_match.destination_port == 80
    cap_filter, hcm_filter = chain.filters
    assert cap_filter.name == "envoy.filters.network.connection_limit"
    assert hcm_filter.name == "envoy.filters.network.http_connection_manager"
    hcm = _unpack(hcm_filter.typed_config, HttpConnectionManager, f"type.googleapis.com/{HCM_TYPE}")
    assert hcm.stat_prefix == f"ciliate_egress_{EGRESS_PORT}"
    assert hcm.rds.route_config_name == lst.name and hcm.rds.config_source.resource_api_version == ApiVersion.V3
    assert hcm.rds.config_source.ads is not None
    rbac_url = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
    filters = {f.name: f.typed_config for f in hcm.http_filters}
    assert list(filters) == ["envoy.filters.http.rbac", RECEIVER_RBAC_FILTER, "envoy.filters.http.router"]
    for name in ("envoy.filters.http.rbac", RECEIVER_RBAC_FILTER):
        listener_level = _unpack(filters[name], RbacFilter, rbac_url).rules
        assert (listener_level.action, listener_level.policies) == (RbacAction.ALLOW, {}), "deny all"
    assert filters["envoy.filters.http.router"].type_url.endswith("router.v3.Router")
    (log,) = hcm.access_log
    als = _unpack(log.typed_config, HttpGrpcAccessLogConfig, "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig")
    common = als.common_config
    assert (log.name, common.log_name, common.grpc_service.envoy_grpc.cluster_name) == (
        "envoy.access_loggers.http_grpc", "ciliate", "ciliate-accesslog",
    )
    assert common.transport_api_version == ApiVersion.V3
    assert hcm.local_reply_config.mappers[0].filter.status_code_filter.comparison.op == ComparisonFilterOp.EQ

    rc = next(x for x in got[ROUTE] if x.name == lst.name)
    (vhost,) = rc.virtual_hosts
    assert (vhost.name, vhost.domains) == ("ciliate", ["*"])
    refused, route = vhost.routes
    assert (route.match.prefix, route.route.cluster) == ("/", "ciliate-original-dst")
    per_route_url = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
    # First, the paths policy/http_path.py refuses: a 400 from the router,
    # with both RBAC filters off so their 403 does not come first.
    assert (refused.match.safe_regex.regex, refused.direct_response.status) == (DOT_SEGMENT_WITH_PARAMS_REGEX, 400)
    assert refused.route is None
    for name in ("envoy.filters.http.rbac", RECEIVER_RBAC_FILTER):
        assert _unpack(refused.typed_per_filter_config[name], RbacPerRoute, per_route_url).rbac is None
    sender = _unpack(route.typed_per_filter_config["envoy.filters.http.rbac"], RbacPerRoute, per_route_url).rbac.rules
    receiver = _unpack(route.typed_per_filter_config[RECEIVER_RBAC_FILTER], RbacPerRoute, per_route_url).rbac.rules
    assert (sender.action, list(sender.policies)) == (RbacAction.ALLOW, ["peers-0"])
    assert sender.policies["peers-0"].permissions[0].and_rules.rules[0].header.string_match.exact == "GET"
    assert (receiver.action, list(receiver.policies)) == (RbacAction.ALLOW, ["other-destinations", "receiver-2"])

    (cl,) = got[CLUSTER]
    assert (cl.name, cl.connect_timeout) == ("ciliate-original-dst", timedelta(seconds=5))
    bind = cl.upstream_bind_config
    assert (bind.source_address.address, bind.source_address.port_value) == ("0.0.0.0", 0)
    (opt,) = bind.socket_options
    assert (opt.description, opt.state) == ("ciliate proxy upstream mark", SocketOptionSocketState.STATE_PREBIND)


def test_benchmark_baseline_takes_routes_from_a_watched_file():
    snap = Renderer(RenderParams(rds_directory="/run/x")).render(state({PORT: (rule([CLIENT_IDENTITY]),)}))
    lst = Listener.parse(snap.of(LISTENER)[NAME].body)
    hcm = HttpConnectionManager.parse(lst.filter_chains[0].filters[-1].typed_config.value)
    src = hcm.rds.config_source.path_config_source
    assert (src.path, src.watched_directory.path) == (f"/run/x/{NAME}/routes.pb", f"/run/x/{NAME}")
    assert hcm.rds.config_source.ads is None


# -- original source: upstream connections keep the client's address


def _original_src_marks(snap) -> dict[str, list[int]]:
    """listener name -> the SO_MARKs of its original_src listener filters."""
    from envoy_data_plane.envoy.extensions.filters.listener.original_src.v3 import OriginalSrc

    out = {}
    for name, res in snap.of(LISTENER).items():
        lst = Listener.parse(res.body)
        out[name] = [OriginalSrc.parse(f.typed_config.value).mark for f in lst.listener_filters
                     if f.name == "envoy.filters.listener.original_src"]
    return out


def _with_sender_peers(st, peers: list[int]):
    """sender_and_receiver with the sender's egress redirect naming `peers`."""
    from dataclasses import replace

    from policy.compiled import PolicyEntry, PolicyKey, PortRange, Protocol, Verdict

    sender = st.endpoints[1]
    entries = tuple(PolicyEntry(PolicyKey(p, Direction.EGRESS, Protocol.TCP, PortRange(80, 80)), Verdict.REDIRECT, EGRESS_PORT)
                    for p in peers)
    return replace(st, endpoints={**st.endpoints, 1: replace(sender, entries=entries)})


def test_listeners_to_local_pods_keep_the_client_address_with_the_proxy_mark():
    from tests.xds.fixtures import INGRESS_PORT, RECEIVER

    snap = Renderer(RenderParams(upstream_mark=0x0B00)).render(_with_sender_peers(sender_and_receiver(), [RECEIVER]))
    marks = _original_src_marks(snap)
    # ingress: the destination is the endpoint itself; egress: every peer is a local pod
    assert marks == {f"ciliate-proxy-{INGRESS_PORT}": [0x0B00], f"ciliate-proxy-{EGRESS_PORT}": [0x0B00]}


@pytest.mark.parametrize("peers", [[IDENTITY_ANY], [IDENTITY_WORLD], [1], [3000, IDENTITY_WORLD]], ids=["any", "world", "host", "pod+world"])
def test_egress_listener_that_may_leave_the_node_keeps_the_node_address(peers):
    from tests.xds.fixtures import INGRESS_PORT

    snap = Renderer(RenderParams()).render(_with_sender_peers(sender_and_receiver(), peers))
    marks = _original_src_marks(snap)
    assert marks[f"ciliate-proxy-{EGRESS_PORT}"] == []
    assert marks[f"ciliate-proxy-{INGRESS_PORT}"] == [0x0B00]


def test_loopback_test_listeners_and_the_switch_keep_the_node_address():
    st = sender_and_receiver()
    assert all(m == [] for m in _original_src_marks(Renderer(RenderParams.test_only_loopback()).render(st)).values())
    assert all(m == [] for m in _original_src_marks(Renderer(RenderParams(original_source=False)).render(st)).values())


def test_egress_listener_to_a_pod_on_another_node_keeps_the_client_address():
    """Cluster mode: a pod of another node is in the ipcache with its label
    identity; its replies come back over the underlay to the proxy, so the
    upstream keeps the client's address and the other node judges the
    client's real identity."""
    from dataclasses import replace
    from ipaddress import IPv4Network

    remote_pod = 4242
    st = _with_sender_peers(sender_and_receiver(), [remote_pod])
    assert _original_src_marks(Renderer(RenderParams()).render(st))[f"ciliate-proxy-{EGRESS_PORT}"] == []
    st = replace(st, ipcache={**st.ipcache, IPv4Network("10.251.2.9/32"): remote_pod})
    assert _original_src_marks(Renderer(RenderParams()).render(st))[f"ciliate-proxy-{EGRESS_PORT}"] == [0x0B00]


def test_every_listener_caps_its_connections_and_buffers_and_times_out_slow_headers():
    from envoy_data_plane.envoy.extensions.filters.network.connection_limit.v3 import ConnectionLimit

    from xds.limits import ProxyLimits

    limits = ProxyLimits(connections_per_listener=7, connections_total=70, connection_buffer_bytes=4096, request_headers_timeout_s=3)
    snap = Renderer(RenderParams(limits=limits)).render(state({PORT: (rule([CLIENT_IDENTITY]),)}))
    lst = Listener.parse(snap.of(LISTENER)[NAME].body)
    first, last = lst.filter_chains[0].filters[0], lst.filter_chains[0].filters[-1]
    assert first.name == "envoy.filters.network.connection_limit", "the cap comes before any HTTP is read"
    assert ConnectionLimit.parse(first.typed_config.value).max_connections == 7
    assert lst.per_connection_buffer_limit_bytes == 4096
    hcm = HttpConnectionManager.parse(last.typed_config.value)
    assert hcm.request_headers_timeout.total_seconds() == 3
    # The defaults are in force without asking.
    default = Listener.parse(Renderer().render(state({PORT: (rule([CLIENT_IDENTITY]),)})).of(LISTENER)[NAME].body)
    assert ConnectionLimit.parse(default.filter_chains[0].filters[0].typed_config.value).max_connections == ProxyLimits().connections_per_listener


def test_proxy_limits_refuse_nonsense():
    import pytest

    from xds.limits import ProxyLimits

    with pytest.raises(ValueError, match="connections_per_listener must be positive"):
        ProxyLimits(connections_per_listener=0)
    with pytest.raises(ValueError, match="above connections_total"):
        ProxyLimits(connections_per_listener=10, connections_total=5)
