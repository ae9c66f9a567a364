"""The ADS gRPC server: grpclib glue between Envoy's streams and the sessions.
Does network I/O (a unix socket by default, optionally loopback TCP).

Responses are encoded by the sessions (serialize.py) and handed to grpclib
as ready bytes through `_PassthroughCodec`, so no betterproto serialization
runs on the event loop; requests (small) are decoded by envoy-data-plane's
classes as usual.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from typing import Any, AsyncIterator

from envoy_data_plane.envoy.service.discovery.v3 import (
    AggregatedDiscoveryServiceBase,
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from grpclib.encoding.proto import ProtoCodec
from grpclib.server import Server

from .cache import SnapshotCache
from .delta import DeltaSession
from .errors import XdsError
from .loopback import require_loopback
from .sotw import SotwSession

log = logging.getLogger(__name__)


# Pending connections the kernel queues before accept. grpclib's default of
# 100 broke a burst of connects (Envoys restarting together, the fan-out
# benchmark): on a full unix-socket backlog a non-blocking connect fails with
# EAGAIN, which asyncio's connect waits out as if in progress, and those
# clients never got a response (bench_xds at 300 clients timed out after 120 s).
BACKLOG = 4096


class Encoded:
    """A message already in wire format."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class _PassthroughCodec(ProtoCodec):
    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, Encoded):
            return message.data
        return super().encode(message, message_type)


class _Server(Server):
    """grpclib's Server.close() cancels the handlers but leaves the HTTP/2
    connections open, so Envoy would not notice the control plane went away
    and would never reconnect. Track the connections and close them too."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self._protocols: weakref.WeakSet = weakref.WeakSet()

    def _protocol_factory(self):  # type: ignore[override]
        proto = super()._protocol_factory()
        self._protocols.add(proto)
        return proto

    def close(self) -> None:
        super().close()
        for proto in list(self._protocols):
            conn = getattr(proto, "connection", None)
            if conn is not None:
                conn.close()


class _Ads(AggregatedDiscoveryServiceBase):
    def __init__(self, server: "XdsServer") -> None:
        self._server = server

    async def stream_aggregated_resources(
        self, messages: AsyncIterator[DiscoveryRequest]
    ) -> AsyncIterator[DiscoveryResponse]:
        async for out in self._server._serve(SotwSession, messages):
            yield out

    async def delta_aggregated_resources(
        self, messages: AsyncIterator[DeltaDiscoveryRequest]
    ) -> AsyncIterator[DeltaDiscoveryResponse]:
        async for out in self._server._serve(DeltaSession, messages):
            yield out


class XdsServer:
    """ADS over gRPC for every node id in `cache`.

    `socket_path`: unix socket to listen on (the default transport: only
    local processes with file access can reach it). `tcp`: optional
    (host, port) on loopback; port 0 picks a free one (see `tcp_port`).
    """

    def __init__(
        self,
        cache: SnapshotCache,
        socket_path: str | None = None,
        tcp: tuple[str, int] | None = None,
    ) -> None:
        if socket_path is None and tcp is None:
            raise XdsError("XdsServer needs socket_path or tcp")
        if tcp is not None:
            require_loopback(tcp[0], "xDS TCP listener", XdsError)
        self.cache = cache
        self.socket_path = socket_path
        self.tcp = tcp
        self.tcp_port: int | None = None
        self._servers: list[Server] = []
        self.streams = 0  # open ADS streams, for status and tests

    async def start(self) -> None:
        if self.socket_path is not None:
            if os.path.exists(self.socket_path):
                os.unlink(self.socket_path)
            srv = _Server([_Ads(self)], codec=_PassthroughCodec())
            await srv.start(path=self.socket_path, backlog=BACKLOG)
            self._servers.append(srv)
        if self.tcp is not None:
            srv = _Server([_Ads(self)], codec=_PassthroughCodec())
            await srv.start(self.tcp[0], self.tcp[1], backlog=BACKLOG)
            self._servers.append(srv)
            self.tcp_port = srv._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for srv in self._servers:
            srv.close()
        for srv in self._servers:
            try:
                await asyncio.wait_for(srv.wait_closed(), 5)
            except asyncio.TimeoutError:
                log.warning("xDS server did not close in 5s")
        self._servers.clear()
        if self.socket_path and os.path.exists(self.socket_path):
            os.unlink(self.socket_path)

    async def _serve(self, session_cls, messages) -> AsyncIterator[Encoded]:
        out: asyncio.Queue = asyncio.Queue()
        done = object()

        async def send(data: bytes) -> None:
            out.put_nowait(data)

        session = session_cls(self.cache, send)
        self.streams += 1

        async def run() -> None:
            try:
                await session.run(messages)
            finally:
                out.put_nowait(done)

        task = asyncio.create_task(run())
        try:
            while True:
                item = await out.get()
                if item is done:
                    break
                yield Encoded(item)
        finally:
            self.streams -= 1
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
