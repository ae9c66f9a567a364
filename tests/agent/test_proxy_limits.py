"""One client cannot take the whole proxy: connections past a listener's
share are closed by Envoy before any HTTP is read, the agent's API keeps
answering while they are held, and the listener serves again once they go.

The agent with the real Envoy (kernel and compiler faked, as in
test_envoy_hardening), a per-listener cap of 20 instead of the default, and
60 connections that each send request headers announcing a body they never
finish (a slow-body client)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from agent.adapters.envoy_proxy import XdsProxy
from sidecar.supervisor import admin_client
from tests.agent.test_envoy_hardening import Node, running
from xds.limits import ProxyLimits
from xds.render import RenderParams

pytestmark = pytest.mark.envoy

CAP = 20
FLOOD = 60
SLOW_BODY = b"POST /upload HTTP/1.1\r\nHost: s\r\nContent-Length: 1000000\r\n\r\nfirst bytes"


class LimitedNode(Node):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        limits = ProxyLimits(connections_per_listener=CAP, connections_total=4 * CAP)
        self.proxy = XdsProxy(self.state_dir, render_params=RenderParams.test_only_loopback(limits=limits))
        self.agent.proxy = self.proxy


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    async with running(LimitedNode, "cil-l-") as n:
        yield n


async def _stats(node: Node, prefix: str) -> dict[str, int]:
    async with admin_client(node.admin_socket) as client:
        text = (await client.get("/stats", params={"filter": prefix})).text
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            out[name.strip()] = int(value)
    return out


async def _closed_by_peer(reader: asyncio.StreamReader) -> bool:
    try:
        return await reader.read(1) == b""
    except ConnectionError:
        return True


async def test_connections_past_a_listeners_share_are_closed_and_the_api_keeps_answering(node: Node) -> None:
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(FLOOD):
            r, w = await asyncio.open_connection("127.0.0.1", node.proxy_port)
            w.write(SLOW_BODY)
            held.append((r, w))
        await asyncio.gather(*(w.drain() for _, w in held), return_exceptions=True)
        # Envoy closes every connection past the cap without a byte; the
        # others get HTTP (this rig's policy answers 403 at the headers).
        pending = {asyncio.create_task(_closed_by_peer(r)) for r, _ in held}
        silent = answered = 0
        while silent < FLOOD - CAP:
            finished, pending = await asyncio.wait(pending, timeout=60, return_when=asyncio.FIRST_COMPLETED)
            assert finished, f"only {silent} of the {FLOOD - CAP} connections past the cap were closed"
            silent += sum(t.result() for t in finished)
            answered += sum(not t.result() for t in finished)
        stats = await _stats(node, "connection_limit")
        limited = sum(v for k, v in stats.items() if k.endswith(".limited_connections"))
        assert limited == FLOOD - CAP and silent == FLOOD - CAP, stats
        assert answered <= CAP

        # The agent's API answers while the flood is held.
        transport = httpx.AsyncHTTPTransport(uds=str(node.state_dir / "agent.sock"))
        async with httpx.AsyncClient(transport=transport, base_url="http://agent", timeout=30) as api:
            health = await api.get("/v1/healthz")
        assert health.status_code == 200 and health.json()["ok"], health.text
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    finally:
        for _, w in held:
            w.close()
        await asyncio.gather(*(w.wait_closed() for _, w in held), return_exceptions=True)

    # Once the flood is gone, the listener serves new connections again.
    async def served() -> bool:
        r, w = await asyncio.open_connection("127.0.0.1", node.proxy_port)
        try:
            w.write(b"GET / HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n")
            await w.drain()
            return (await r.read()).startswith(b"HTTP/1.1 ")
        except ConnectionError:
            return False
        finally:
            w.close()

    for _ in range(100):
        if (await _stats(node, "connection_limit")).get(f"connection_limit.ciliate-proxy-{node.proxy_port}_connections.active_connections", 1) == 0:
            break
        await asyncio.sleep(0.1)
    assert await served(), "the listener does not serve after the flood closed"


def test_the_bootstrap_bounds_the_whole_envoy() -> None:
    from sidecar.bootstrap import BootstrapParams, render_bootstrap

    doc = render_bootstrap(BootstrapParams("n", "/x.sock", "/a.sock", limits=ProxyLimits(connections_per_listener=9, connections_total=99, heap_bytes=1 << 28)))
    om = doc["overload_manager"]
    monitors = {m["name"]: m["typed_config"] for m in om["resource_monitors"]}
    assert monitors["envoy.resource_monitors.fixed_heap"]["max_heap_size_bytes"] == 1 << 28
    assert monitors["envoy.resource_monitors.global_downstream_max_connections"]["max_active_downstream_connections"] == 99
    actions = {a["name"] for a in om["actions"]}
    assert {"envoy.overload_actions.stop_accepting_requests", "envoy.overload_actions.reset_high_memory_stream"} <= actions


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--proxy-max-connections-per-listener", "0"], "--proxy-max-connections-per-listener must be positive, not 0"),
        (["--proxy-max-connections", "10"], "--proxy-max-connections-per-listener (2048) is above --proxy-max-connections (10)"),
        (["--proxy-max-heap-mb", "-1"], "--proxy-max-heap-mb must be positive, not -1"),
    ],
    ids=["per-listener-zero", "per-listener-above-total", "negative-heap"],
)
def test_a_wrong_proxy_limit_is_named_before_the_kernel_is_touched(
    agent_cli, tmp_path: Path, flags: list[str], says: str,
) -> None:
    out = agent_cli(tmp_path, *flags)
    assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "bpf").exists(), "the kernel side was touched before the flags were checked"
