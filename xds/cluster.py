"""The ORIGINAL_DST cluster every listener forwards to. Pure; no I/O."""

from __future__ import annotations

import socket

from envoy_data_plane.envoy.config.cluster.v3 import ClusterDiscoveryType, ClusterLbPolicy
from envoy_data_plane.envoy.config.core.v3 import SocketOptionSocketState

from . import messages as pb


def original_dst_cluster(*, name: str, connect_timeout_s: float, upstream_mark: int, header: str | None) -> bytes:
    """Cluster forwarding to each request's original destination.

    `upstream_mark`: SO_MARK on upstream sockets, set before connect so the
    eBPF program recognises proxy-originated traffic; 0 leaves it unset
    (setting it needs CAP_NET_ADMIN, which only a test run without root
    lacks). `header`: the request header carrying the destination; None for
    Envoy's own x-envoy-original-dst-host (TEST ONLY)."""
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
    )
