"""The agent core with the real policy compiler and loader (fake kernel and Envoy):
the star-wars policies load from files and reach the endpoints they select."""

from __future__ import annotations

import shutil
from ipaddress import IPv4Address
from pathlib import Path

from agent.adapters.policy_compiler import PolicyFileLoader, make_compiler_factory
from agent.daemon import Agent, AgentConfig, build_agent
from agent.core.models import EndpointCreate, EndpointState
from policy.compiled import Verdict
from tests.agent.fakes import FakeDatapath, FakeProxy

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "starwars"


def make(tmp: Path, dp: FakeDatapath, proxy: FakeProxy) -> Agent:
    cfg = AgentConfig(state_dir=tmp / "state", policy_dir=tmp / "pol", metrics_port=None, settle=0.0)
    return build_agent(cfg, compiler_factory=make_compiler_factory(), loader=PolicyFileLoader(), datapath=dp, proxy=proxy)


async def test_starwars_l7_policy_with_the_real_compiler_survives_restart(tmp_path: Path) -> None:
    (tmp_path / "pol").mkdir()
    dp, proxy = FakeDatapath(), FakeProxy()
    agent = make(tmp_path, dp, proxy)
    await agent.start(serve_api=False)
    try:
        ids = {}
        for name, ip, labels in [
            ("deathstar", "10.200.0.10", {"org": "empire", "class": "deathstar"}),
            ("tiefighter", "10.200.0.11", {"org": "empire", "class": "tiefighter"}),
        ]:
            v, _ = await agent.create_endpoint(EndpointCreate(container_id=name, host_ifname=f"lxc{name}"[:15], ipv4=IPv4Address(ip), labels=labels), wait=5)
            assert v.state == EndpointState.READY
            ids[name] = v.id
        shutil.copy(EXAMPLES / "2-l7.yaml", tmp_path / "pol" / "2-l7.yaml")
        await agent.watcher.poll_once()
        await agent.queue.drain(5)
        pols = agent.policies().policies
        assert pols and all(p.state == "enforced" for p in pols) and pols[0].endpoints == 1
        assert any(v == Verdict.REDIRECT for v, _ in dp.kernel[ids["deathstar"]].values())
        ports = {pp for _, pp in dp.kernel[ids["deathstar"]].values() if pp}
        identities = {v.id: v.identity for v in agent.table.views()}
    finally:
        await agent.stop()
    again = make(tmp_path, dp, FakeProxy())
    await again.start(serve_api=False)
    try:
        await again.queue.drain(5)
        assert {v.id: v.identity for v in again.table.views()} == identities
        assert {pp for _, pp in dp.kernel[ids["deathstar"]].values() if pp} == ports
    finally:
        await again.stop()
