"""The IPv4-only datapath, as the agent drives it (agent/adapters/kernel_datapath.py),
fails closed for IPv6: a dual-stack pod's IPv6 is dropped while its IPv4 is
enforced as always, and an IPv6-only endpoint (which the maps cannot key)
gets the drop-everything program on its veth. The pods' IPv6 is wired by
ciliate-cni's own code (agent/cni/net6.py), inside the test node."""

from __future__ import annotations

import asyncio

import socket
from collections.abc import Iterator
from ipaddress import IPv6Address
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from agent.adapters.kernel_datapath import KernelDatapath
from agent.cni import net6
from agent.cni.addressing import IPv6Plan
from agent.core.ports import EndpointUnsupported
from redirect import tc
from redirect.datapath import BLOCK_NAME, Datapath
from tests.datapath.conftest import ENDPOINT_IDS, IDENTITIES, Install
from tests.datapath.support import endpoint, state, tcp_flow_passes
from tests.kernelnode import Pod, in_netns

pytestmark = pytest.mark.privileged

NODE6 = IPv6Address("fd00:201::fffe")
IPV6 = {"a": IPv6Address("fd00:201::2"), "b": IPv6Address("fd00:201::3")}


def _wire_ipv6(inst: Install, pod: Pod) -> None:
    """What ciliate-cni does for a dual-stack pod's IPv6, on the test node's veth."""
    v6 = IPv6Plan(IPV6[pod.name], NODE6)
    with in_netns(inst.node.netns):
        net6.enable_on_host(pod.host_ifname)
        with IPRoute() as ipr:
            host_mac = ipr.get_links(pod.host_ifindex)[0].get_attr("IFLA_ADDRESS")
    net6.enable_in_pod(f"/run/netns/{pod.netns}", "eth0")
    with IPRoute(netns=pod.netns) as pr:
        idx = pr.link_lookup(ifname="eth0")[0]
        pod_mac = pr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
        net6.wire_pod(pr, idx, v6, host_mac)
    with in_netns(inst.node.netns), IPRoute() as ipr:
        net6.wire_host(ipr, pod.host_ifindex, v6, pod_mac)


def _tcp6_passes(client: Pod, server: Pod, port: int, wait: float) -> bool:
    with in_netns(server.netns):
        srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    with in_netns(client.netns):
        cli = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((str(IPV6[server.name]), port))
        srv.listen(1)
        cli.settimeout(wait)
        try:
            cli.connect((str(IPV6[server.name]), port))
        except OSError:
            return False
        return True
    finally:
        cli.close()
        srv.close()


@pytest.fixture
def dual_stack(fresh_install) -> Iterator[tuple[Install, KernelDatapath]]:
    with fresh_install(attach=()) as inst:
        inst.dp.close()  # the agent's adapter owns the install from here
        with in_netns(inst.node.netns):  # the node forwards IPv6, as kernelnode makes it forward IPv4
            Path("/proc/sys/net/ipv6/conf/all/forwarding").write_text("1")
        for name in ("a", "b"):
            _wire_ipv6(inst, inst.node.pods[name])
        kd = KernelDatapath(inst.pin_dir, inst.state_dir, netns=inst.node.netns)
        try:
            yield inst, kd
        finally:
            inst.dp = Datapath(inst.pin_dir, inst.state_dir, netns=inst.node.netns)  # teardown adopts what kd attached


async def test_a_dual_stack_pods_ipv6_is_dropped_and_its_ipv4_enforced(dual_stack) -> None:
    inst, kd = dual_stack
    a, b = inst.node.pods["a"], inst.node.pods["b"]
    assert _tcp6_passes(a, b, 8080, 2.0), "without the datapath the IPv6 wiring carries traffic"
    for name in ("a", "b"):
        p = inst.node.pods[name]
        await kd.attach_endpoint(ENDPOINT_IDS[name], p.host_ifname, p.ip, IDENTITIES[name])
    # Neither endpoint enforces policy: IPv4 flows, IPv6 is dropped all the same.
    outcome = await kd.apply(state(1, [endpoint(inst.ep("a"), ingress=False, egress=False),
                                       endpoint(inst.ep("b"), ingress=False, egress=False)]))
    assert not outcome.failed
    assert tcp_flow_passes(a, b, 8080, True)
    assert not _tcp6_passes(a, b, 8080, 0.5)
    assert [(f.version, f.enforced) for f in kd.families()] == [(4, True), (6, False)]
    await kd.close()


async def test_an_ipv6_only_endpoint_gets_the_drop_everything_program(dual_stack) -> None:
    inst, kd = dual_stack
    a, c = inst.node.pods["a"], inst.node.pods["c"]
    with pytest.raises(EndpointUnsupported, match="IPv4"):
        await kd.attach_endpoint(ENDPOINT_IDS["c"], c.host_ifname, None, IDENTITIES["c"])
    # pyroute2's blocking calls run their own event loop: not on this one.
    now = await asyncio.to_thread(tc.attached, c.host_ifname, inst.node.netns)
    assert now is not None and (now.ingress, now.egress) == (BLOCK_NAME, BLOCK_NAME)
    assert not await asyncio.to_thread(tcp_flow_passes, c, a, 8080, False)  # nothing passes, whatever its family
    # Again (the agent retries on any later regeneration): same program, same answer.
    with pytest.raises(EndpointUnsupported):
        await kd.attach_endpoint(ENDPOINT_IDS["c"], c.host_ifname, None, IDENTITIES["c"])
    assert await asyncio.to_thread(tc.attached, c.host_ifname, inst.node.netns) == now
    await kd.close()
