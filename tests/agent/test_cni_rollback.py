"""A CNI ADD racing a long regeneration either succeeds or fails with nothing
left behind: no endpoint at the agent, no veth, no IPAM lease.

The agent is the real core behind its real API socket (fake datapath and
proxy); the IPAM plugin is the real host-local; only the veth wiring, which
needs root, is replaced by a recorder.
"""

from __future__ import annotations

import asyncio
import json
from ipaddress import IPv4Address, IPv4Interface, IPv6Address
from pathlib import Path

import pytest

from agent.cni import net as cni_net
from agent.cni import plugin as cni
from agent.api.client import AgentClient
from agent.cni.addressing import Plan
from agent.cni.net import Wired
from tests.agent.conftest import Rig
from tests.agent.fakes import FakeDatapath

HOST_LOCAL_DIR = "/usr/lib/cni"


class SlowDatapath(FakeDatapath):
    """A regeneration that takes as long as the test wants: attaching waits."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def attach_endpoint(self, endpoint_id: int, ifname: str, ipv4: IPv4Address | None, identity: int,
                              ipv6: IPv6Address | None = None) -> None:
        await self.release.wait()
        await super().attach_endpoint(endpoint_id, ifname, ipv4, identity, ipv6)


class Veths:
    def __init__(self) -> None:
        self.present: set[str] = set()

    def add(self, netns: str, ifname: str, host_if: str, plan: Plan, mtu: int | None) -> Wired:
        self.present.add(host_if)
        assert plan.ipv4 is not None
        return Wired(host_if, "aa:aa:aa:aa:aa:aa", "bb:bb:bb:bb:bb:bb", IPv4Interface(f"{plan.ipv4.address}/32"), None)

    def remove(self, host_if: str) -> bool:
        had = host_if in self.present
        self.present.discard(host_if)
        return had


@pytest.mark.skipif(not Path(HOST_LOCAL_DIR, "host-local").exists(), reason="the host-local IPAM plugin is not installed")
async def test_add_that_times_out_during_a_long_regeneration_leaves_nothing_behind(tmp_path: Path, monkeypatch, short_dir: Path) -> None:
    rig = Rig(tmp_path)
    rig.policy_dir.mkdir()
    rig.datapath = SlowDatapath()
    socket = short_dir / "agent.sock"
    agent = rig.agent(socket_path=socket, metrics_port=None)
    await agent.start()

    veths = Veths()
    monkeypatch.setattr(cni_net, "add", veths.add)
    monkeypatch.setattr(cni_net, "remove", veths.remove)
    # The plugin gives up on the agent long before the endpoint's policy is in place.
    monkeypatch.setattr(cni, "_client", lambda conf, timeout=None: AgentClient(socket, timeout=0.5))

    leases = tmp_path / "ipam"
    conf = {
        "cniVersion": "1.0.0", "name": "ciliate", "type": "ciliate-cni", "agentSocket": str(socket), "waitSeconds": 5,
        "ipam": {"type": "host-local", "dataDir": str(leases), "ranges": [[{"subnet": "10.244.9.0/29"}]]},
    }
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "racer", "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "eth0", "CNI_PATH": HOST_LOCAL_DIR}
    try:
        code, out = await asyncio.to_thread(cni.run, json.dumps(conf).encode(), env)
        assert code != 0 and json.loads(out)["code"] == 11  # try again later
        assert len(agent.table) == 0, [v.model_dump() for v in agent.table.views()]  # no phantom endpoint
        assert veths.present == set()
        assert not [p for p in (leases / "ciliate").glob("10.*")], "the IPAM lease was not released"
    finally:
        rig.datapath.release.set()
        await agent.stop()
