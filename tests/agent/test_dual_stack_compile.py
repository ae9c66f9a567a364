"""A dual-stack pod's IPv6 address reaches the compiler through the agent
(endpoint table -> EndpointSpec -> the real compiler), and stays there across
a restart; the node's IPv6 addresses join `host`. Real compiler, fake kernel
and Envoy (tests/datapath/test_ipv6_datapath.py drives the real one)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from pathlib import Path

from agent.adapters.policy_compiler import PolicyFileLoader, make_compiler_factory
from agent.core.addresses import host_addresses
from agent.core.models import EndpointCreate, EndpointState
from agent.daemon import Agent, AgentConfig, build_agent
from policy.identity import IDENTITY_HOST
from tests.agent.fakes import FakeDatapath, FakeProxy

V4, V6 = IPv4Address("10.200.0.5"), IPv6Address("fd00:200::5")
NODE = [IPv4Address("192.168.1.10"), IPv6Address("2001:db8::10")]


def make(tmp: Path, dp: FakeDatapath) -> Agent:
    cfg = AgentConfig(state_dir=tmp / "state", policy_dir=None, metrics_port=None, settle=0.0)
    return build_agent(cfg, compiler_factory=make_compiler_factory(), loader=PolicyFileLoader(), datapath=dp, proxy=FakeProxy(),
                       host_ips=lambda: list(NODE))


def ipcache(agent: Agent) -> dict:
    assert agent.regenerator is not None and agent.regenerator.last_state is not None
    return dict(agent.regenerator.last_state.ipcache)


async def test_both_addresses_map_to_the_pods_identity_and_survive_a_restart(tmp_path: Path) -> None:
    dp = FakeDatapath()
    agent = make(tmp_path, dp)
    await agent.start(serve_api=False)
    try:
        web = EndpointCreate(container_id="web", host_ifname="lxcweb", ipv4=V4, ipv6=V6, labels={"app": "web"})
        view, _ = await agent.create_endpoint(web, wait=5)
        assert view.state == EndpointState.READY
        got = ipcache(agent)
        assert got[IPv4Network(V4)] == got[IPv6Network(V6)] == view.identity
    finally:
        await agent.stop()
    again = make(tmp_path, dp)
    await again.start(serve_api=False)
    try:
        await again.queue.drain(5)
        got = ipcache(again)
        assert got[IPv4Network(V4)] == got[IPv6Network(V6)] == view.identity
    finally:
        await again.stop()


async def test_the_nodes_ipv6_addresses_are_host(tmp_path: Path) -> None:
    agent = make(tmp_path, FakeDatapath())
    await agent.start(serve_api=False)
    try:
        await agent.create_endpoint(EndpointCreate(container_id="a", host_ifname="lxca", ipv4=V4, labels={"app": "a"}), wait=5)
        got = ipcache(agent)
        assert got[IPv6Network("2001:db8::10/128")] == got[IPv4Network("192.168.1.10/32")] == IDENTITY_HOST
    finally:
        await agent.stop()


def test_host_addresses_keep_both_families_but_not_loopback_or_link_local() -> None:
    found = [ip_address(a) for a in ["fe80::ecee:eeff:feee:eeee", "::1", "127.0.0.1", "2001:db8::10", "fd00:1::1",
                                     "192.168.1.10", "fe80::ecee:eeff:feee:eeee", "10.200.0.1"]]
    assert [str(a) for a in host_addresses(found)] == ["10.200.0.1", "192.168.1.10", "2001:db8::10", "fd00:1::1"]
