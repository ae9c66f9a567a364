"""The proxy listener: one per proxy port, an HTTP connection manager that
takes its routes over RDS, RBAC filter(s) before the router. Pure; no I/O."""

from __future__ import annotations

from envoy_data_plane.envoy.config.accesslog.v3 import ComparisonFilterOp
from envoy_data_plane.envoy.config.core.v3 import ApiVersion, TrafficDirection
from envoy_data_plane.envoy.config.listener import v3 as listener_v3
from envoy_data_plane.envoy.extensions.filters.listener.original_src import v3 as original_src_v3
from envoy_data_plane.envoy.extensions.filters.network.connection_limit import v3 as connection_limit_v3
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManagerPathWithEscapedSlashesAction as EscapedSlashes,
)

from policy.compiled import Direction

from . import messages as pb
from .limits import ProxyLimits
from .rbac import DENY_ALL, RBAC_FILTER, RBAC_URL, RECEIVER_RBAC_FILTER, RECEIVER_SHADOW_PREFIX
from .serialize import any_, encoders

HCM_URL = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_URL = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
GRPC_ALS_URL = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"
ROUTER_FILTER = "envoy.filters.http.router"
HCM_FILTER = "envoy.filters.network.http_connection_manager"
GRPC_ALS_NAME = "envoy.access_loggers.http_grpc"
DENIED_STATUS = 403
DENIED_BODY = "Access denied"
# %2F / %5C in a path are answered 400. Unescaping them would change what an
# application that treats them as data sees; keeping them would let
# `/public/..%2fprivate` reach a backend that decodes them after the rules
# matched. See policy/http_path.py, which `trace` uses to see the same path
# Envoy's rules see.
ESCAPED_SLASHES = EscapedSlashes.REJECT_REQUEST

# The original_src listener filter: upstream connections bind (IP_TRANSPARENT)
# to the downstream's address, so the server sees the client pod, not the
# node. The connection's own remote address is used, never a header.
ORIGINAL_SRC_FILTER = "envoy.filters.listener.original_src"
ORIGINAL_SRC_URL = "type.googleapis.com/envoy.extensions.filters.listener.original_src.v3.OriginalSrc"
ListenerFilter = encoders(listener_v3.ListenerFilter)
OriginalSrc = encoders(original_src_v3.OriginalSrc)

# Connections past a listener's share are closed before any byte is read
# (xds/limits.py says why per listener).
CONNECTION_LIMIT_FILTER = "envoy.filters.network.connection_limit"
CONNECTION_LIMIT_URL = "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit"
ConnectionLimit = encoders(connection_limit_v3.ConnectionLimit)

_TRAFFIC_DIRECTION = {Direction.INGRESS: TrafficDirection.INBOUND, Direction.EGRESS: TrafficDirection.OUTBOUND}


def route_config_name(proxy_port: int) -> str:
    return f"ciliate-proxy-{proxy_port}"


listener_name = route_config_name


def rds_source(route_config: str, rds_directory: str | None) -> bytes:
    """ConfigSource of the listener's routes: ADS, or (benchmark baseline
    only) a watched file."""
    v3 = pb.ConfigSource.resource_api_version(ApiVersion.V3)
    if rds_directory is None:
        return pb.ConfigSource.ads() + v3
    # One directory per route configuration: Envoy re-reads every file whose
    # watched directory saw a move, so sharing one would reload them all.
    sub = f"{rds_directory}/{route_config}"
    watched = pb.PathConfigSource.watched_directory(pb.WatchedDirectory.path(sub))
    path = pb.PathConfigSource.path(f"{sub}/routes.pb") + watched
    return pb.ConfigSource.path_config_source(path) + v3


def _http_filter(name: str, type_url: str, config: bytes) -> bytes:
    config_any = pb.HttpFilter.typed_config(any_(type_url, config))
    return pb.HttpConnectionManager.http_filters(pb.HttpFilter.name(name), config_any)


def _grpc_access_log(log_name: str, cluster: str) -> bytes:
    common = pb.CommonGrpcAccessLogConfig
    als = pb.HttpGrpcAccessLogConfig.common_config(
        common.log_name(log_name),
        common.grpc_service(pb.GrpcService.envoy_grpc(pb.EnvoyGrpc.cluster_name(cluster))),
        common.transport_api_version(ApiVersion.V3),
    )
    config_any = pb.AccessLog.typed_config(any_(GRPC_ALS_URL, als))
    return pb.HttpConnectionManager.access_log(pb.AccessLog.name(GRPC_ALS_NAME), config_any)


def _denied_reply() -> bytes:
    """RBAC's local 403 gets the body `Access denied`."""
    status = pb.ComparisonFilter.op(ComparisonFilterOp.EQ) + pb.ComparisonFilter.value(
        pb.RuntimeUInt32.default_value(DENIED_STATUS) + pb.RuntimeUInt32.runtime_key("ciliate.denied_status")
    )
    mapper = pb.ResponseMapper.filter(pb.AccessLogFilter.status_code_filter(pb.StatusCodeFilter.comparison(status)))
    mapper += pb.ResponseMapper.body(pb.DataSource.inline_string(DENIED_BODY))
    return pb.HttpConnectionManager.local_reply_config(pb.LocalReplyConfig.mappers(mapper))


def http_connection_manager(
    *,
    stat_prefix: str,
    rds: bytes,
    route_config: str,
    direction: Direction,
    accesslog: tuple[str, str] | None,
    limits: ProxyLimits = ProxyLimits(),
) -> bytes:
    """`rds`: the ConfigSource (rds_source); `accesslog`: (log name, cluster of
    the access log server) or None for none."""
    hcm = pb.HttpConnectionManager
    out = hcm.stat_prefix(stat_prefix) + hcm.rds(pb.Rds.config_source(rds), pb.Rds.route_config_name(route_config))
    out += hcm.request_headers_timeout(limits.request_headers_timeout_s)
    # The listener-level RBAC allows nothing: every route carries its own
    # per-route RBAC, so a route config without one fails closed.
    out += _http_filter(RBAC_FILTER, RBAC_URL, DENY_ALL)
    if direction == Direction.EGRESS:
        # Its shadow verdict (audit mode) under its own keys: both filters
        # write the same metadata namespace.
        receiver = DENY_ALL + pb.RbacFilter.shadow_rules_stat_prefix(RECEIVER_SHADOW_PREFIX)
        out += _http_filter(RECEIVER_RBAC_FILTER, RBAC_URL, receiver)
    # No x-envoy-* headers of the router's own (x-envoy-expected-rq-timeout-ms)
    # on upstream requests: they tell the server about the proxy, not the client.
    out += _http_filter(ROUTER_FILTER, ROUTER_URL, pb.Router.suppress_envoy_headers(True))
    if accesslog is not None:
        out += _grpc_access_log(*accesslog)
    out += _denied_reply()
    # Path normalization (policy/http_path.py states it): the path the RBAC rules see
    # is the path the upstream receives: RFC 3986 dot segments, unreserved %XX
    # decoded, slashes merged, escaped slashes rejected. A dot segment with
    # parameters left after that is refused by the first route (routes.py).
    out += hcm.normalize_path(True) + hcm.merge_slashes(True) + hcm.path_with_escaped_slashes_action(ESCAPED_SLASHES)
    return out


def listener(
    *,
    name: str,
    address: str,
    port: int,
    transparent: bool,
    direction: Direction,
    original_port: int | None,
    hcm: bytes | None = None,
    original_source_mark: int | None = None,
    limits: ProxyLimits = ProxyLimits(),
    address6: str | None = None,
    filters: tuple[bytes, ...] = (),
    listener_filters: tuple[bytes, ...] = (),
) -> bytes:
    """Listener on address:port. `original_port`: serve only connections whose
    local address (the original destination) has this port; None for all.
    `original_source_mark`: upstream connections keep the downstream's
    address (original_src filter) and carry this SO_MARK (0 sets none);
    None: they leave from the node's address. The filter chain is the
    connection limit then the HTTP connection manager `hcm`, or then
    `filters` (encoded listener.v3.Filter messages; tls_listener.py);
    `listener_filters` (encoded ListenerFilter messages) run first."""
    lst = pb.Listener
    chain_match = b""
    if original_port is not None:
        chain_match = pb.FilterChain.filter_chain_match(pb.FilterChainMatch.destination_port(original_port))
    if hcm is not None:
        filters = (network_filter(HCM_FILTER, HCM_URL, hcm),)
    cap = ConnectionLimit.stat_prefix(f"{name}_connections") + ConnectionLimit.max_connections(limits.connections_per_listener)
    chain = (network_filter(CONNECTION_LIMIT_FILTER, CONNECTION_LIMIT_URL, cap), *filters)
    if original_source_mark is not None:
        listener_filters = (*listener_filters, _original_src(original_source_mark))
    return (
        lst.name(name)
        + lst.address(pb.Address.socket_address(pb.SocketAddress.address(address) + pb.SocketAddress.port_value(port)))
        + (b"" if address6 is None else lst.additional_addresses(pb.AdditionalAddress.address(
            pb.Address.socket_address(pb.SocketAddress.address(address6) + pb.SocketAddress.port_value(port)))))
        + lst.filter_chains(chain_match, *map(pb.FilterChain.filters, chain))
        + lst.per_connection_buffer_limit_bytes(limits.connection_buffer_bytes)
        + lst.transparent(transparent)
        + lst.traffic_direction(_TRAFFIC_DIRECTION[direction])
        + b"".join(map(lst.listener_filters, listener_filters))
    )


def network_filter(name: str, type_url: str, config: bytes) -> bytes:
    """listener.v3.Filter: one network filter of a filter chain."""
    return pb.Filter.name(name) + pb.Filter.typed_config(any_(type_url, config))


def _original_src(mark: int) -> bytes:
    return ListenerFilter.name(ORIGINAL_SRC_FILTER) + ListenerFilter.typed_config(
        any_(ORIGINAL_SRC_URL, OriginalSrc.mark(mark) if mark else b"")
    )
