"""The ADS gRPC server over real gRPC (grpclib clients standing in for Envoy):
unix socket and loopback TCP, SotW and delta, and stop() ending the streams."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from envoy_data_plane.envoy.config.core.v3 import Node
from envoy_data_plane.envoy.service.discovery.v3 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from grpclib.client import Channel
from grpclib.const import Cardinality

from tests.xds.fixtures import CLIENT_IDENTITY, rule, state
from xds.cache import SnapshotCache
from xds.errors import XdsError
from xds.render import Renderer
from xds.resources import LISTENER
from xds.server import XdsServer

SOTW = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
DELTA = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"


@pytest.mark.parametrize("transport", [pytest.param("unix", id="unix-socket"), pytest.param("tcp", id="loopback-tcp")])
@pytest.mark.parametrize("delta", [pytest.param(False, id="sotw"), pytest.param(True, id="delta")])
async def test_listeners_served_over_grpc_and_stop_ends_the_stream(transport, delta, short_dir):
    cache = SnapshotCache()
    cache.set_snapshot("n1", Renderer().render(state({15001: (rule([CLIENT_IDENTITY]),)})))
    d = short_dir
    if transport == "unix":
        server = XdsServer(cache, socket_path=str(d / "xds.sock"))
    else:
        server = XdsServer(cache, tcp=("127.0.0.1", 0))
    await server.start()
    channel = Channel(path=str(d / "xds.sock")) if transport == "unix" else Channel("127.0.0.1", server.tcp_port)
    try:
        path, req_t, resp_t = (DELTA, DeltaDiscoveryRequest, DeltaDiscoveryResponse) if delta else (SOTW, DiscoveryRequest, DiscoveryResponse)
        async with channel.request(path, Cardinality.STREAM_STREAM, req_t, resp_t) as stream:
            await stream.send_message(req_t(node=Node(id="n1"), type_url=LISTENER))
            resp = await asyncio.wait_for(stream.recv_message(), 5)
            assert resp.type_url == LISTENER and len(resp.resources) == 1
            await server.stop()
            with pytest.raises(Exception):
                # The control plane went away: the client must see its stream end.
                msg = await asyncio.wait_for(stream.recv_message(), 5)
                if msg is None:
                    raise ConnectionError("stream ended")
    finally:
        channel.close()
        await server.stop()


def test_tcp_listener_must_be_loopback():
    with pytest.raises(XdsError, match="loopback"):
        XdsServer(SnapshotCache(), tcp=("0.0.0.0", 18000))


async def test_a_burst_of_connections_is_queued_not_refused(short_dir):
    """Envoys restarting together connect at once, before the server's loop
    accepts any. A non-blocking unix-socket connect on a full backlog fails
    with EAGAIN, and asyncio's connect would wait on it as if in progress: a
    client that never gets a response. All 300 must be queued."""
    import errno
    import socket

    server = XdsServer(SnapshotCache(), socket_path=str(short_dir / "xds.sock"))
    await server.start()
    socks = []
    try:
        # No await in between: the server cannot accept while these connect.
        for _ in range(300):
            s = socket.socket(socket.AF_UNIX)
            s.setblocking(False)
            socks.append(s)
        results = [s.connect_ex(str(short_dir / "xds.sock")) for s in socks]
        refused = [errno.errorcode.get(r, r) for r in results if r != 0]
        assert not refused, f"{len(refused)} of 300 connects not queued: {refused[:3]}"
    finally:
        for s in socks:
            s.close()
        await server.stop()
