"""The ORIGINAL_DST cluster every listener forwards to. Pure; no I/O."""

from __future__ import annotations

import socket

from envoy_data_plane.envoy.config.cluster.v3 import ClusterDiscoveryType, ClusterLbPolicy
from envoy_data_plane.envoy.config.core.v3 import SocketOptionSocketState

from . import messages as pb
from .serialize import any_

PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
PROTOCOL_OPTIONS_URL = f"type.googleapis.com/{PROTOCOL_OPTIONS}"
HEADER_MUTATION_FILTER = "envoy.filters.http.header_mutation"
HEADER_MUTATION_URL = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
UPSTREAM_CODEC_FILTER = "envoy.filters.http.upstream_codec"
UPSTREAM_CODEC_URL = "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
# What the cluster reads the destination from when no header is named.
ENVOY_ORIGINAL_DST_HEADER = "x-envoy-original-dst-host"


def _upstream_filter(name: str, type_url: str, config: bytes) -> bytes:
    return pb.UpstreamHttpProtocolOptions.http_filters(pb.HttpFilter.name(name), pb.HttpFilter.typed_config(any_(type_url, config)))


def _without_header(header: str) -> bytes:
    """Protocol options: HTTP/1.1 upstreams (as with none) whose requests
    leave without `header`. Upstream filters run after the load balancer
    picked the host, so the cluster still reads the header first; the
    upstream sees neither our value nor one a client sent under that name."""
    remove = pb.HeaderMutations.request_mutations(pb.HeaderMutation.remove(header))
    opts = pb.UpstreamHttpProtocolOptions.explicit_http_config(pb.ExplicitHttpConfig.http_protocol_options(b""))
    opts += _upstream_filter(HEADER_MUTATION_FILTER, HEADER_MUTATION_URL, pb.HeaderMutationFilter.mutations(remove))
    opts += _upstream_filter(UPSTREAM_CODEC_FILTER, UPSTREAM_CODEC_URL, b"")  # the last upstream filter sends
    return pb.Cluster.typed_extension_protocol_options(PROTOCOL_OPTIONS, any_(PROTOCOL_OPTIONS_URL, opts))


def original_dst_cluster(*, name: str, connect_timeout_s: float, upstream_mark: int, header: str | None) -> bytes:
    """Cluster forwarding to each request's original destination.

    `upstream_mark`: SO_MARK on upstream sockets, set before connect so the
    eBPF program recognises proxy-originated traffic; 0 leaves it unset
    (setting it needs CAP_NET_ADMIN, which only a test run without root
    lacks). `header`: the request header carrying the destination; None for
    Envoy's own x-envoy-original-dst-host (TEST ONLY). Either is removed
    from the request before it leaves."""
    bind = pb.BindConfig.source_address(pb.SocketAddress.address("0.0.0.0") + pb.SocketAddress.port_value(0))
    if upstream_mark:
        opt = pb.SocketOption
        bind += pb.BindConfig.socket_options(
            opt.description("ciliate proxy upstream mark"),
            opt.level(socket.SOL_SOCKET),
            opt.name(socket.SO_MARK),
            opt.int_value(upstream_mark),
            opt.state(SocketOptionSocketState.STATE_PREBIND),
        )
    lb = pb.OriginalDstLbConfig.use_http_header(True)
    if header is not None:
        lb += pb.OriginalDstLbConfig.http_header_name(header)
    c = pb.Cluster
    return (
        c.name(name)
        + c.type(ClusterDiscoveryType.ORIGINAL_DST)
        + c.connect_timeout(connect_timeout_s)
        + c.lb_policy(ClusterLbPolicy.CLUSTER_PROVIDED)
        + c.upstream_bind_config(bind)
        + c.original_dst_lb_config(lb)
        + _without_header(header or ENVOY_ORIGINAL_DST_HEADER)
    )
