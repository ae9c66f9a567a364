"""Fixtures for the xds tests: fake ADS streams for the protocol tests, and a
real Envoy rig (xDS server, access log server, supervised Envoy, upstream
HTTP server), all on loopback with ports picked by the kernel."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

import httpx
import pytest
from aiohttp import web
from envoy_data_plane.envoy.service.discovery.v3 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from envoy_data_plane.envoy.config.core.v3 import Node

from sidecar.supervisor import DRAIN_TIME_S, EnvoySupervisor
from xds.accesslog import AccessLogServer
from xds.cache import SnapshotCache
from xds.render import PROXY_UPSTREAM_MARK, Renderer, RenderParams
from xds.server import XdsServer


def free_port() -> int:
    """A loopback port the kernel just handed out (bind 0, read back)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------ fake streams


class FakeStream:
    """Drives a Session the way the gRPC glue does, without gRPC: requests go
    in through `push`, responses come out decoded through `next`."""

    def __init__(self, session_cls, cache: SnapshotCache, delta: bool = False) -> None:
        self.delta = delta
        self._in: asyncio.Queue = asyncio.Queue()
        self._out: asyncio.Queue = asyncio.Queue()
        self.session = session_cls(cache, self._send)
        self.task = asyncio.create_task(self.session.run(self._requests()))

    async def _send(self, data: bytes) -> None:
        cls = DeltaDiscoveryResponse if self.delta else DiscoveryResponse
        self._out.put_nowait(cls.parse(data))

    async def _requests(self) -> AsyncIterator:
        while True:
            item = await self._in.get()
            if item is None:
                return
            yield item

    def push(self, **kw) -> None:
        kw.setdefault("node", Node(id="n1"))
        self._in.put_nowait(DeltaDiscoveryRequest(**kw) if self.delta else DiscoveryRequest(**kw))

    async def next(self, timeout: float = 1.0):
        return await asyncio.wait_for(self._out.get(), timeout)

    async def quiet(self, wait: float = 0.05) -> bool:
        """True if nothing was sent within `wait` seconds."""
        await asyncio.sleep(wait)
        return self._out.empty()

    async def close(self) -> None:
        self._in.put_nowait(None)
        await asyncio.wait_for(self.task, 2)


# ------------------------------------------------------------ real Envoy rig


@dataclass
class Rig:
    workdir: Path
    cache: SnapshotCache
    xds: XdsServer
    accesslog: AccessLogServer
    envoy: EnvoySupervisor
    renderer: Renderer
    upstream_port: int
    node: str = "n1"
    # Every request the upstream received: (method, target as sent, headers in order).
    upstream_seen: list[tuple[str, str, tuple[tuple[str, str], ...]]] = field(default_factory=list)

    def url(self, proxy_port: int, path: str) -> str:
        return f"http://127.0.0.1:{proxy_port}{path}"

    @property
    def upstream_header(self) -> dict[str, str]:
        # TEST ONLY: the ORIGINAL_DST cluster reads the upstream from this header
        # (RenderParams.test_only_loopback), standing in for the TPROXY redirect.
        return {"x-envoy-original-dst-host": f"127.0.0.1:{self.upstream_port}"}

    async def publish(self, state, timeout: float = 10.0):
        return await self.publish_snapshot(self.renderer.render(state), timeout)

    async def publish_snapshot(self, snap, timeout: float = 10.0):
        self.cache.set_snapshot(self.node, snap)
        await self.cache.wait_for_ack(self.node, snap.version, timeout)
        return snap

    async def get(self, client: httpx.AsyncClient, proxy_port: int, path: str = "/", **kw) -> httpx.Response:
        headers = {**self.upstream_header, **kw.pop("headers", {})}
        return await client.request(kw.pop("method", "GET"), self.url(proxy_port, path), headers=headers, **kw)


async def _upstream(seen: list) -> tuple[web.AppRunner, int]:
    async def handler(req: web.Request) -> web.Response:
        # raw_path: the target exactly as Envoy sent it, nothing decoded or resolved.
        seen.append((req.method, req.raw_path, tuple(req.headers.items())))
        return web.Response(text=f"upstream {req.method} {req.raw_path}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


@contextlib.asynccontextmanager
async def running_rig(delta: bool = False, node: str = "n1", drain_time_s: int = DRAIN_TIME_S) -> AsyncIterator[Rig]:
    """The xDS and access log servers, an upstream and a supervised Envoy,
    all torn down on exit (Envoy stopped, servers closed, work directory
    removed)."""
    # Unix socket paths are limited to 108 bytes: keep the directory short.
    workdir = Path(tempfile.mkdtemp(prefix="cx-"))
    seen: list = []
    runner, up_port = await _upstream(seen)
    cache = SnapshotCache()
    xds = XdsServer(cache, socket_path=str(workdir / "xds.sock"))
    als = AccessLogServer(socket_path=str(workdir / "als.sock"))
    env = EnvoySupervisor(
        node,
        xds_socket=str(workdir / "xds.sock"),
        accesslog_socket=str(workdir / "als.sock"),
        workdir=workdir,
        delta=delta,
        backoff_initial=0.1,
        drain_time_s=drain_time_s,
    )
    # SO_MARK on upstream sockets needs CAP_NET_ADMIN: keep the production
    # mark when root (CI), leave it out for a developer's non-root run.
    mark = PROXY_UPSTREAM_MARK if os.geteuid() == 0 else 0
    params = RenderParams.test_only_loopback(upstream_mark=mark)
    rig = Rig(workdir, cache, xds, als, env, Renderer(params), up_port, node, seen)
    try:
        await xds.start()
        await als.start()
        await env.start()
        yield rig
    finally:
        try:
            await rig.envoy.stop()
        finally:
            await rig.xds.stop()
            await rig.accesslog.stop()
            await runner.cleanup()
            if os.environ.get("CILIATE_KEEP_ENVOY_LOGS") is None:
                shutil.rmtree(rig.workdir, ignore_errors=True)


@pytest.fixture
async def envoy_rig():
    """`rig = await envoy_rig(delta=False)` starts a running_rig, torn down
    after the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(delta: bool = False, node: str = "n1", drain_time_s: int = DRAIN_TIME_S) -> Rig:
            return await stack.enter_async_context(running_rig(delta, node, drain_time_s))

        yield make
