"""Per address family, whether the datapath enforces policy: `ciliate status`
and its JSON say so, with the endpoints each family concerns; on a node with
IPv6 disabled an endpoint the datapath cannot enforce (IPv6 only) is kept
not-ready, once, with the reason, not retried."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv6Address

from agent.adapters.kernel_datapath import IPV6_DISABLED
from agent.cli.agent_commands import family_lines
from agent.core.models import EndpointCreate, EndpointRecord, FamilyStatus
from agent.core.ports import FamilySupport
from agent.core.reports import families_of
from tests.agent.conftest import Rig
from tests.agent.test_agent_core import started
from tests.agent.test_api import client, run_cli, served  # noqa: F401  (fixture)
from tests.agent.test_dual_stack_endpoints import BODY

DROPPED = IPV6_DISABLED


def test_family_status_counts_endpoints_per_family() -> None:
    records = [
        EndpointRecord(id=1, container_id="a", host_ifname="lxc1", ipv4=IPv4Address("10.0.0.1"), ipv6=IPv6Address("fd00::1")),
        EndpointRecord(id=2, container_id="b", host_ifname="lxc2", ipv4=IPv4Address("10.0.0.2")),
        EndpointRecord(id=3, container_id="c", host_ifname="lxc3", ipv6=IPv6Address("fd00::3")),
    ]
    got = families_of([FamilySupport(6, False, DROPPED), FamilySupport(4, True)], records)
    assert got == {"ipv4": FamilyStatus(enforced=True, endpoints=2), "ipv6": FamilyStatus(enforced=False, detail=DROPPED, endpoints=2)}
    assert family_lines(got) == [
        "IPv4:            enforced; 2 endpoints with an IPv4 address",
        f"IPv6:            not enforced, {DROPPED}; 2 endpoints with an IPv6 address",
    ]
    assert family_lines({"ipv6": FamilyStatus(enforced=True)}) == ["IPv6:            enforced; 0 endpoints with an IPv6 address"]


async def test_status_says_per_family_what_the_datapath_enforces(rig: Rig, served, capsys) -> None:  # noqa: F811
    rig.datapath.supported = (FamilySupport(4, True), FamilySupport(6, False, DROPPED))  # a node with IPv6 disabled
    _, sock = served
    async with client(sock) as c:
        await c.post("/v1/endpoints", params={"wait": "5"}, json=BODY)
    code, out, _ = await run_cli(["status", "--socket", str(sock)], capsys)
    lines = out.splitlines()
    assert code == 0 and "IPv4:            enforced; 1 endpoint with an IPv4 address" in lines
    assert f"IPv6:            not enforced, {DROPPED}; 1 endpoint with an IPv6 address" in lines
    code, out, _ = await run_cli(["status", "-o", "json", "--socket", str(sock)], capsys)
    assert json.loads(out)["families"] == {
        "ipv4": {"enforced": True, "detail": "", "endpoints": 1},
        "ipv6": {"enforced": False, "detail": DROPPED, "endpoints": 1},
    }


async def test_an_endpoint_the_datapath_cannot_key_stays_not_ready_without_retries(rig: Rig) -> None:
    rig.datapath.requires_ipv4 = True  # as the kernel datapath on a node with IPv6 disabled
    agent = await started(rig)
    try:
        v6, _ = await agent.create_endpoint(
            EndpointCreate(container_id="v6", host_ifname="lxcv6", ipv6=IPv6Address("fd00::6"), labels={"app": "a"}), wait=5)
        dual, _ = await agent.create_endpoint(
            EndpointCreate(container_id="d", host_ifname="lxcd", ipv4=IPv4Address("10.0.0.7"), ipv6=IPv6Address("fd00::7"), labels={"app": "a"}), wait=5)
        assert v6.state.value == "not-ready" and v6.reason is not None and "lxcv6" in v6.reason and "IPv4" in v6.reason
        assert dual.state.value == "ready"  # attached by its IPv4 address
        report = agent.regenerator.last_report if agent.regenerator else None
        assert report is not None and not report.failed[v6.id].transient
        assert v6.id not in rig.datapath.attached and dual.id in rig.datapath.attached
    finally:
        await agent.stop()
