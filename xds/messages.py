"""Encoders for every Envoy message ciliate emits, resolved once at import
from envoy-data-plane's classes (see schema.py, serialize.py). No I/O.

Use sites read like the message: `pb.Listener.name(n) + pb.Listener.address(...)`.
A misspelt field fails at first use with SchemaError naming the message, and
tests/xds/test_serialize.py calls every field named here.
"""

from __future__ import annotations

from envoy_data_plane.envoy.config.accesslog import v3 as accesslog_v3
from envoy_data_plane.envoy.config.cluster import v3 as cluster_v3
from envoy_data_plane.envoy.config.core import v3 as core_v3
from envoy_data_plane.envoy.config.listener import v3 as listener_v3
from envoy_data_plane.envoy.config.rbac import v3 as rbac_v3
from envoy_data_plane.envoy.config.route import v3 as route_v3
from envoy_data_plane.envoy.config.common.mutation_rules import v3 as mutation_rules_v3
from envoy_data_plane.envoy.extensions.access_loggers.grpc import v3 as grpc_als_v3
from envoy_data_plane.envoy.extensions.filters.http.header_mutation import v3 as header_mutation_v3
from envoy_data_plane.envoy.extensions.filters.http.router import v3 as router_v3
from envoy_data_plane.envoy.extensions.filters.http.rbac import v3 as rbac_filter_v3
from envoy_data_plane.envoy.extensions.filters.common.set_filter_state import v3 as set_filter_state_v3
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager import v3 as hcm_v3
from envoy_data_plane.envoy.extensions.filters.network.rbac import v3 as network_rbac_v3
from envoy_data_plane.envoy.extensions.filters.network.set_filter_state import v3 as network_set_filter_state_v3
from envoy_data_plane.envoy.extensions.filters.network.tcp_proxy import v3 as tcp_proxy_v3
from envoy_data_plane.envoy.extensions.upstreams.http import v3 as upstream_http_v3
from envoy_data_plane.envoy.type.matcher import v3 as matcher_v3

from .serialize import Encoders, encoders

# core
Address = encoders(core_v3.Address)
SocketAddress = encoders(core_v3.SocketAddress)
CidrRange = encoders(core_v3.CidrRange)
ConfigSource = encoders(core_v3.ConfigSource)
PathConfigSource = encoders(core_v3.PathConfigSource)
WatchedDirectory = encoders(core_v3.WatchedDirectory)
GrpcService = encoders(core_v3.GrpcService)
EnvoyGrpc = encoders(core_v3.GrpcServiceEnvoyGrpc)
RuntimeUInt32 = encoders(core_v3.RuntimeUInt32)
DataSource = encoders(core_v3.DataSource)
BindConfig = encoders(core_v3.BindConfig)
SocketOption = encoders(core_v3.SocketOption)
HeaderValueOption = encoders(core_v3.HeaderValueOption)
HeaderValue = encoders(core_v3.HeaderValue)
SubstitutionFormatString = encoders(core_v3.SubstitutionFormatString)

# listener, HTTP connection manager, access log
Listener = encoders(listener_v3.Listener)
FilterChain = encoders(listener_v3.FilterChain)
AdditionalAddress = encoders(listener_v3.AdditionalAddress)
FilterChainMatch = encoders(listener_v3.FilterChainMatch)
Filter = encoders(listener_v3.Filter)
HttpConnectionManager = encoders(hcm_v3.HttpConnectionManager)
Rds = encoders(hcm_v3.Rds)
HttpFilter = encoders(hcm_v3.HttpFilter)
Router = encoders(router_v3.Router)
LocalReplyConfig = encoders(hcm_v3.LocalReplyConfig)
ResponseMapper = encoders(hcm_v3.ResponseMapper)
AccessLog = encoders(accesslog_v3.AccessLog)
AccessLogFilter = encoders(accesslog_v3.AccessLogFilter)
StatusCodeFilter = encoders(accesslog_v3.StatusCodeFilter)
ComparisonFilter = encoders(accesslog_v3.ComparisonFilter)
HttpGrpcAccessLogConfig = encoders(grpc_als_v3.HttpGrpcAccessLogConfig)
CommonGrpcAccessLogConfig = encoders(grpc_als_v3.CommonGrpcAccessLogConfig)

# TLS SNI listeners: the network RBAC filter, the original destination as
# filter state, and the TCP proxy (xds/tls_listener.py)
NetworkRbac = encoders(network_rbac_v3.Rbac)
SetFilterState = encoders(network_set_filter_state_v3.Config)
FilterStateValue = encoders(set_filter_state_v3.FilterStateValue)
TcpProxy = encoders(tcp_proxy_v3.TcpProxy)

# cluster
Cluster = encoders(cluster_v3.Cluster)
OriginalDstLbConfig = encoders(cluster_v3.ClusterOriginalDstLbConfig)
UpstreamHttpProtocolOptions = encoders(upstream_http_v3.HttpProtocolOptions)
ExplicitHttpConfig = encoders(upstream_http_v3.HttpProtocolOptionsExplicitHttpConfig)
HeaderMutationFilter = encoders(header_mutation_v3.HeaderMutation)
HeaderMutations = encoders(header_mutation_v3.Mutations)
HeaderMutation = encoders(mutation_rules_v3.HeaderMutation)

# routes
RouteConfiguration = encoders(route_v3.RouteConfiguration)
VirtualHost = encoders(route_v3.VirtualHost)
Route = encoders(route_v3.Route)
RouteMatch = encoders(route_v3.RouteMatch)
RouteAction = encoders(route_v3.RouteAction)
DirectResponseAction = encoders(route_v3.DirectResponseAction)
HeaderMatcher = encoders(route_v3.HeaderMatcher)
StringMatcher = encoders(matcher_v3.StringMatcher)
RegexMatcher = encoders(matcher_v3.RegexMatcher)

# RBAC: the HTTP filter's config and per-route config, and the rules they hold
RbacFilter = encoders(rbac_filter_v3.Rbac)
RbacPerRoute = encoders(rbac_filter_v3.RbacPerRoute)
RbacRules = encoders(rbac_v3.Rbac)
Policy = encoders(rbac_v3.Policy)
Permission = encoders(rbac_v3.Permission)
PermissionSet = encoders(rbac_v3.PermissionSet)
Principal = encoders(rbac_v3.Principal)
PrincipalSet = encoders(rbac_v3.PrincipalSet)

# Every table above, by name (tests/xds/test_serialize.py walks them).
ALL = {name: enc for name, enc in globals().items() if isinstance(enc, Encoders)}
