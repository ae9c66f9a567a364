"""An aiohttp test client over the REST app of a started test agent, and raw-path requests.

The app is built with agent.api.server.build_app over the same fake-backed Agent the
other agent tests use, served on loopback TCP by aiohttp.test_utils (no unix
socket, no pytest-aiohttp). `raw` sends a path exactly as given, so
percent-encodings reach the server untouched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from agent.api.server import build_app
from agent.core.agent import Agent
from tests.agent.conftest import Rig


@asynccontextmanager
async def api_client(rig: Rig) -> AsyncIterator[tuple[Agent, TestClient]]:
    agent = rig.agent()
    await agent.start(serve_api=False)
    client = TestClient(TestServer(build_app(agent)))
    await client.start_server()
    try:
        yield agent, client
    finally:
        await client.close()
        await agent.stop()


async def raw(client: TestClient, method: str, path_and_query: str, **kw) -> ClientResponse:
    server = client.server
    url = URL(f"{server.scheme}://{server.host}:{server.port}{path_and_query}", encoded=True)
    return await client.session.request(method, url, **kw)
