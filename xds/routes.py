"""The route configuration of one listener: a route refusing the paths
policy/http_path.py refuses after Envoy's normalization, then a catch-all
route to the cluster carrying the RBAC filters' per-route configs. Pure; no
I/O."""

from __future__ import annotations

from functools import lru_cache

from envoy_data_plane.envoy.config.core.v3 import HeaderValueOptionHeaderAppendAction

from policy.http_path import DOT_SEGMENT_WITH_PARAMS_REGEX

from . import messages as pb
from .rbac import RBAC_FILTER, RBAC_PER_ROUTE_URL, RECEIVER_RBAC_FILTER
from .serialize import any_

_OVERWRITE = HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD
REFUSED_PATH_STATUS = 400
REFUSED_PATH_BODY = "Bad Request: dot segment with parameters in path"
# RBACPerRoute without `rbac` turns the filter off for the route.
_RBAC_OFF = b""


def _per_filter(filter_name: str, rbac_per_route: bytes) -> bytes:
    return pb.Route.typed_per_filter_config(filter_name, any_(RBAC_PER_ROUTE_URL, rbac_per_route))


@lru_cache(maxsize=2)
def _refused_path_route(receiver_rbac: bool) -> bytes:
    """400 for a path whose normalized form still holds `.;x` or `..;x`
    (written with `%2e`, or after a backslash): Envoy leaves such a segment
    unresolved, servlet containers resolve it after the rules matched. Route
    matching sees the normalized path, the same one the RBAC rules see. The
    RBAC filters run before the router and would answer 403 first, so they
    are off on this route; it forwards nothing."""
    route = pb.Route.match(pb.RouteMatch.safe_regex(pb.RegexMatcher.regex(DOT_SEGMENT_WITH_PARAMS_REGEX)))
    answer = pb.DirectResponseAction.status(REFUSED_PATH_STATUS)
    answer += pb.DirectResponseAction.body(pb.DataSource.inline_string(REFUSED_PATH_BODY))
    route += pb.Route.direct_response(answer) + _per_filter(RBAC_FILTER, _RBAC_OFF)
    if receiver_rbac:
        route += _per_filter(RECEIVER_RBAC_FILTER, _RBAC_OFF)
    return route


def route_configuration(
    *, name: str, cluster: str, rbac: bytes, receiver_rbac: bytes | None, original_dst_header: str | None
) -> bytes:
    """`rbac`, `receiver_rbac`: RBACPerRoute configs (rbac.per_route /
    rbac.receiver_per_route); `original_dst_header`: the header that carries
    the accepted socket's local address to the ORIGINAL_DST cluster, or None."""
    route = pb.Route.match(pb.RouteMatch.prefix("/")) + pb.Route.route(pb.RouteAction.cluster(cluster))
    route += _per_filter(RBAC_FILTER, rbac)
    if receiver_rbac is not None:
        route += _per_filter(RECEIVER_RBAC_FILTER, receiver_rbac)
    refused = pb.VirtualHost.routes(_refused_path_route(receiver_rbac is not None))
    vhost = pb.VirtualHost.name("ciliate") + pb.VirtualHost.domains("*") + refused + pb.VirtualHost.routes(route)
    rc = pb.RouteConfiguration
    body = rc.name(name) + rc.virtual_hosts(vhost)
    if original_dst_header is not None:
        # Overwrite, so a client can never choose the upstream.
        header = pb.HeaderValue.key(original_dst_header) + pb.HeaderValue.value("%DOWNSTREAM_LOCAL_ADDRESS%")
        option = pb.HeaderValueOption.header(header) + pb.HeaderValueOption.append_action(_OVERWRITE)
        body += rc.request_headers_to_add(option)
    return body
