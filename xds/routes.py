"""The route configuration of one listener: a catch-all route to the cluster
carrying the RBAC filters' per-route configs. Pure; no I/O."""

from __future__ import annotations

from envoy_data_plane.envoy.config.core.v3 import HeaderValueOptionHeaderAppendAction

from . import messages as pb
from .rbac import RBAC_FILTER, RBAC_PER_ROUTE_URL, RECEIVER_RBAC_FILTER
from .serialize import any_

_OVERWRITE = HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD


def _per_filter(filter_name: str, rbac_per_route: bytes) -> bytes:
    return pb.Route.typed_per_filter_config(filter_name, any_(RBAC_PER_ROUTE_URL, rbac_per_route))


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
    vhost = pb.VirtualHost.name("ciliate") + pb.VirtualHost.domains("*") + pb.VirtualHost.routes(route)
    rc = pb.RouteConfiguration
    body = rc.name(name) + rc.virtual_hosts(vhost)
    if original_dst_header is not None:
        # Overwrite, so a client can never choose the upstream.
        header = pb.HeaderValue.key(original_dst_header) + pb.HeaderValue.value("%DOWNSTREAM_LOCAL_ADDRESS%")
        option = pb.HeaderValueOption.header(header) + pb.HeaderValueOption.append_action(_OVERWRITE)
        body += rc.request_headers_to_add(option)
    return body
