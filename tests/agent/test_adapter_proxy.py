"""The xDS proxy adapter with the real Envoy: ACK, NACK text, and an Envoy left behind
by a killed agent being retired by the next one."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from agent.adapters.envoy_proxy import XdsProxy
from sidecar.leftover import envoys_using
from sidecar.bootstrap import read_admin_socket
from sidecar.supervisor import admin_client
from agent.core.ports import ProxyRejected
from policy.compiled import (
    ALLOW_ALL_HTTP,
    CompiledState,
    Direction,
    EndpointPolicy,
    HTTPRule,
    L7PeerRule,
    L7Policy,
    RedirectKey,
)
from xds.render import RenderParams


def state(path_regex: str | None, revision: int = 1) -> CompiledState:
    rule = HTTPRule(method="GET", path=path_regex) if path_regex is not None else ALLOW_ALL_HTTP
    l7 = L7Policy(RedirectKey(1, Direction.INGRESS, 80), 10080, (L7PeerRule(frozenset({0}), rule),))
    ep = EndpointPolicy(1, 256, None, True, False, (), (l7,), frozenset({"default/p"}))
    return CompiledState(revision, {1: ep}, {})


async def listener_names(admin_socket: str | Path) -> list[str]:
    async with admin_client(admin_socket) as client:
        resp = await client.get("/listeners", params={"format": "json"})
    return sorted(ls["name"] for ls in resp.json().get("listener_statuses", []))


def test_envoys_using_finds_processes_by_bootstrap(tmp_path: Path) -> None:
    def proc(pid: int, *argv: str) -> None:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")

    proc(10, "/venv/bin/envoy", "-c", "/run/a/envoy/bootstrap.json")
    proc(11, "/venv/bin/envoy", "-c", "/run/b/envoy/bootstrap.json")
    proc(12, "/usr/bin/vim", "/run/a/envoy/bootstrap.json")
    assert envoys_using(Path("/run/a/envoy/bootstrap.json"), tmp_path) == [10]


@pytest.mark.envoy
async def test_ack_nack_and_retiring_a_leftover_envoy() -> None:
    run = Path(tempfile.mkdtemp(prefix="cil-px-"))
    params = RenderParams.test_only_loopback()
    first = XdsProxy(run, render_params=params)
    await first.start()
    old_pid = first.supervisor.pid
    try:
        assert await first.publish(state("/v1/.*"), timeout=20)
        with pytest.raises(ProxyRejected) as err:
            await first.publish(state("(unbalanced"), timeout=20)
        assert err.value.detail
        # Simulate `kill -9` of the agent: its Envoy lives on; a new agent starts.
        first.supervisor._stopping = True  # the dead agent's supervisor no longer watches
        first.supervisor._monitor.cancel()
        first._checker.cancel()  # nor checks its listeners
        await first.accesslog.stop()
        await first.server.stop()
        old_admin = read_admin_socket(run / "envoy" / "bootstrap.json")
        assert old_admin is not None
        serving = await listener_names(old_admin)
        assert serving, "the published L7 policy gave the Envoy no listener"
        second = XdsProxy(run, render_params=params)
        await second.start()
        try:
            # The old Envoy reconnects to the new agent's xDS server; until the
            # new agent publishes, it must keep the listeners it serves L7 with
            # (an empty start-up snapshot would remove them: connections
            # redirected meanwhile would find no proxy socket).
            for _ in range(300):
                if second.server.streams >= 2:
                    break
                await asyncio.sleep(0.1)
            assert second.server.streams >= 2, "the old Envoy did not reconnect"
            await asyncio.sleep(0.5)
            assert await listener_names(old_admin) == serving
            assert envoys_using(run / "envoy" / "bootstrap.json") == sorted({old_pid, second.supervisor.pid})
            assert await second.publish(state("/v1/.*", 2), timeout=20)
            # Now the new one has the listeners: the old one is drained and retired.
            for _ in range(300):
                if envoys_using(run / "envoy" / "bootstrap.json") == [second.supervisor.pid]:
                    break
                await asyncio.sleep(0.1)
            assert envoys_using(run / "envoy" / "bootstrap.json") == [second.supervisor.pid]
            # Each Envoy had its own admin socket; the retired one's is gone.
            assert second.supervisor.admin_socket is not None and str(second.supervisor.admin_socket) != old_admin
            assert await listener_names(second.supervisor.admin_socket)
            assert not Path(old_admin).exists()
        finally:
            await second.stop()
    finally:
        try:
            os.kill(old_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await asyncio.gather(first.supervisor._proc.wait(), return_exceptions=True)
        shutil.rmtree(run, ignore_errors=True)
