"""ciliate-cni wiring pods of both families, IPv6 only and IPv4 only into real
network namespaces (privileged), registered with an agent (fake datapath:
nothing is attached to the veths, so the wiring alone decides what flows;
the real datapath's IPv6 fail-closed is tests/datapath/test_ipv6_fail_closed.py).

A namespace stands in for the host, as in test_cni.py; its own names, so
both modules may run side by side."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.conftest import Rig
from tests.agent.test_cni import HOST_LOCAL_DIR, _cni, conf
from tests.kernelnode import in_netns

HOST_NS = "cilagt-cni6-host"
POD_A, POD_B = "cilagt-cni6-a", "cilagt-cni6-b"
V4 = [{"subnet": "10.244.78.0/24"}]
V6 = [{"subnet": "fd00:10:244:78::/64"}]
NODE6 = "fd00:10:244:78::1"  # the IPv6 range's gateway: the node's address toward pods, on ciliate_host


@pytest.fixture
def namespaces() -> Iterator[None]:
    names = (HOST_NS, POD_A, POD_B)
    for name in names:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield
    finally:
        for name in reversed(names):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, check=True).stdout


def _sysctl(ns: str, path: str, value: str | None = None) -> str:
    """Read (or write) /proc/sys/<path> as seen from inside `ns`."""
    with in_netns(ns):
        p = Path("/proc/sys") / path
        if value is not None:
            p.write_text(value)
        return p.read_text().strip()


def _exchange(server_ns: str, addr: str, client_ns: str, port: int = 8080) -> str:
    """A TCP connection from `client_ns` to [addr]:port served in `server_ns`;
    returns the source address the server saw."""
    with in_netns(server_ns):
        srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    with in_netns(client_ns):
        cli = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((addr, port))  # a tentative (DAD) address could not be bound
        srv.listen(1)
        srv.settimeout(5)
        cli.settimeout(5)
        cli.connect((addr, port))
        conn, peer = srv.accept()
        conn.close()
        return peer[0]
    finally:
        cli.close()
        srv.close()


def _env(pod_ns: str, container: str) -> dict:
    return {"CNI_CONTAINERID": container, "CNI_NETNS": f"/var/run/netns/{pod_ns}", "CNI_IFNAME": "eth0", "CNI_PATH": HOST_LOCAL_DIR}


def _conf(short: Path, ranges: list) -> dict:
    return conf(
        agentSocket=str(short / "agent.sock"),
        ipam={"type": "host-local", "dataDir": str(short / "ipam"), "ranges": ranges},
        args={"cni": {"labels": [{"key": "app", "value": "web"}]}},
    )


def _route_to(ns: str, addr: str) -> str:
    return next((line for line in _ip(ns, "-6", "route").splitlines() if line.startswith(addr + " ")), "")


@pytest.mark.privileged
async def test_a_dual_stack_pod_is_wired_for_both_families(rig: Rig, namespaces: None, short_dir: Path) -> None:
    agent = rig.agent(socket_path=short_dir / "agent.sock")
    await agent.start()
    try:
        # A runtime that turns IPv6 off for new devices (Docker without IPv6) does not keep it off the pod's.
        for key in ("all", "default"):
            _sysctl(POD_A, f"net/ipv6/conf/{key}/disable_ipv6", "1")
        c, env = _conf(short_dir, [V4, V6]), _env(POD_A, "cni6-a")
        rc, result = await _cni("ADD", c, env, HOST_NS)
        assert rc == 0, result
        assert [(ip["address"], ip["interface"]) for ip in result["ips"]] == [("10.244.78.2/32", 1), ("fd00:10:244:78::2/128", 1)]
        assert result["interfaces"][1]["sandbox"] == env["CNI_NETNS"]
        (ep,) = agent.table.views()
        assert (str(ep.ipv4), str(ep.ipv6), ep.state.value) == ("10.244.78.2", "fd00:10:244:78::2", "ready")
        host_if, host_mac, pod_mac = ep.host_ifname, result["interfaces"][0]["mac"], result["interfaces"][1]["mac"]

        # The pod: a /128 usable at once, the link-local gateway pinned to the host veth, the default route.
        (link,) = json.loads(_ip(POD_A, "-j", "-6", "addr", "show", "dev", "eth0"))
        (mine,) = [a for a in link["addr_info"] if a["local"] == "fd00:10:244:78::2"]
        assert mine["prefixlen"] == 128 and not mine.get("tentative") and not mine.get("dadfailed")
        assert "default via fe80::1 dev eth0" in _ip(POD_A, "-6", "route")
        neigh = _ip(POD_A, "-6", "neigh", "show", "fe80::1", "dev", "eth0")
        assert host_mac in neigh and "PERMANENT" in neigh
        assert "default via 10.244.78.1" in _ip(POD_A, "route")  # IPv4 as before

        # The host: the /128 route from the node's address, the pod's MAC pinned, the gateway on the veth.
        route = _route_to(HOST_NS, "fd00:10:244:78::2")
        assert f"dev {host_if}" in route and f"src {NODE6}" in route
        neigh = _ip(HOST_NS, "-6", "neigh", "show", "fd00:10:244:78::2", "dev", host_if)
        assert pod_mac in neigh and "PERMANENT" in neigh
        assert "fe80::1/64" in _ip(HOST_NS, "-6", "addr", "show", "dev", host_if)
        assert f"{NODE6}/128" in _ip(HOST_NS, "-6", "addr", "show", "dev", "ciliate_host")
        assert "10.244.78.1/32" in _ip(HOST_NS, "addr", "show", "dev", "ciliate_host")
        assert _sysctl(HOST_NS, f"net/ipv6/conf/{host_if}/forwarding") == "1"
        assert _sysctl(HOST_NS, f"net/ipv6/conf/{host_if}/disable_ipv6") == "0"
        assert f"10.244.78.2 dev {host_if}" in _ip(HOST_NS, "route")

        rc, out = await _cni("CHECK", {**c, "prevResult": result}, env, HOST_NS)
        assert rc == 0, out
        for _ in range(2):  # DEL twice: idempotent
            rc, out = await _cni("DEL", c, env, HOST_NS)
            assert rc == 0, out
        assert agent.table.views() == [] and _route_to(HOST_NS, "fd00:10:244:78::2") == ""
        rc, out = await _cni("CHECK", {**c, "prevResult": result}, env, HOST_NS)
        assert rc != 0 and out["code"] == 5 and "missing" in out["msg"]
    finally:
        await agent.stop()


@pytest.mark.privileged
async def test_dual_stack_pods_reach_each_other_and_the_node_over_ipv6(rig: Rig, namespaces: None, short_dir: Path) -> None:
    agent = rig.agent(socket_path=short_dir / "agent.sock")
    await agent.start()
    try:
        # The node forwards IPv6 between interfaces, as it forwards IPv4 (ip_forward): its setting, not the plugin's.
        _sysctl(HOST_NS, "net/ipv6/conf/all/forwarding", "1")
        c = _conf(short_dir, [V4, V6])
        addrs = {}
        for pod in (POD_A, POD_B):
            rc, result = await _cni("ADD", c, _env(pod, pod), HOST_NS)
            assert rc == 0, result
            addrs[pod] = result["ips"][1]["address"].split("/")[0]
        # At once (no DAD wait): pod to pod through the host, from the pod's own address.
        assert _exchange(POD_B, addrs[POD_B], POD_A) == addrs[POD_A]
        # The node to a pod: from its address on ciliate_host, which the host route names.
        assert _exchange(POD_A, addrs[POD_A], HOST_NS) == NODE6
        # A pod to the node.
        assert _exchange(HOST_NS, NODE6, POD_B) == addrs[POD_B]
        for pod in (POD_A, POD_B):
            rc, out = await _cni("DEL", c, _env(pod, pod), HOST_NS)
            assert rc == 0, out
    finally:
        await agent.stop()


@pytest.mark.privileged
async def test_an_ipv6_only_pod(rig: Rig, namespaces: None, short_dir: Path) -> None:
    rig.datapath.requires_ipv4 = True  # as on a node with IPv6 disabled: an endpoint without IPv4 stays not-ready
    agent = rig.agent(socket_path=short_dir / "agent.sock")
    await agent.start()
    try:
        c, env = _conf(short_dir, [V6]), _env(POD_A, "cni6-only")
        rc, result = await _cni("ADD", c, env, HOST_NS)
        assert rc == 0, result
        assert [ip["address"] for ip in result["ips"]] == ["fd00:10:244:78::2/128"] and result["routes"] == [{"dst": "::/0", "gw": "fe80::1"}]
        (ep,) = agent.table.views()
        assert ep.ipv4 is None and str(ep.ipv6) == "fd00:10:244:78::2" and ep.state.value == "not-ready"
        assert "inet " not in _ip(POD_A, "-4", "addr", "show", "dev", "eth0")
        assert "default" not in _ip(POD_A, "-4", "route")
        assert "inet " not in _ip(HOST_NS, "-4", "addr", "show", "dev", "ciliate_host")  # no IPv4 gateway was needed
        # Nothing is attached by the fake datapath: the wiring alone carries the traffic.
        assert _exchange(POD_A, "fd00:10:244:78::2", HOST_NS) == NODE6
        rc, out = await _cni("CHECK", {**c, "prevResult": result}, env, HOST_NS)
        assert rc == 0, out
        rc, out = await _cni("DEL", c, env, HOST_NS)
        assert rc == 0, out
        assert agent.table.views() == []
    finally:
        await agent.stop()


@pytest.mark.privileged
async def test_an_ipv4_only_pod_gets_no_ipv6_wiring(rig: Rig, namespaces: None, short_dir: Path) -> None:
    agent = rig.agent(socket_path=short_dir / "agent.sock")
    await agent.start()
    try:
        c, env = _conf(short_dir, [V4]), _env(POD_A, "cni4-only")
        rc, result = await _cni("ADD", c, env, HOST_NS)
        assert rc == 0, result
        assert [ip["address"] for ip in result["ips"]] == ["10.244.78.2/32"] and result["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.244.78.1"}]
        (ep,) = agent.table.views()
        assert str(ep.ipv4) == "10.244.78.2" and ep.ipv6 is None
        assert "default" not in _ip(POD_A, "-6", "route")
        assert "fd00" not in _ip(POD_A, "-6", "addr") and "fe80::1/64" not in _ip(HOST_NS, "-6", "addr", "show", "dev", ep.host_ifname)
        rc, out = await _cni("DEL", c, env, HOST_NS)
        assert rc == 0, out
    finally:
        await agent.stop()
