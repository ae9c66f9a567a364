"""SIGTERM: the agent stops its API and proxy, keeps the datapath enforcing, keeps its state."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from agent.api.client import AgentClient
from agent.core.models import EndpointCreate
from tests.agent.conftest import Rig


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")])
async def test_signal_stops_cleanly_and_leaves_the_datapath_enforcing(rig: Rig, sig: signal.Signals) -> None:
    short = Path(tempfile.mkdtemp(prefix="cil-term-"))
    sock = short / "agent.sock"
    agent = rig.agent(socket_path=sock)
    runner = asyncio.create_task(agent.run_until_signalled())
    try:
        while not sock.exists():
            await asyncio.sleep(0.01)
        req = EndpointCreate(container_id="c1", host_ifname="lxc1", ipv4=IPv4Address("10.200.0.1"), labels={"app": "a"})
        with AgentClient(sock) as c:
            ep = await asyncio.to_thread(c.create_endpoint, req, 5)
        assert ep.state.value == "ready"
        os.kill(os.getpid(), sig)
        await asyncio.wait_for(runner, 10)
        assert rig.datapath.detached == [] and ep.id in rig.datapath.attached
        assert rig.proxy.stopped == 1 and rig.datapath.closed == 1
        assert _refused(sock)  # nobody answers on the API socket any more
        # The endpoint table survived on disk.
        assert '"container_id": "c1"' in (rig.state_dir / "endpoints.json").read_text()
    finally:
        if not runner.done():
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        shutil.rmtree(short, ignore_errors=True)


def _refused(sock: Path) -> bool:
    import socket

    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(str(sock))
    except OSError:
        return True
    finally:
        s.close()
    return False
