"""ciliate-cni with both address families, without the kernel: reading IPAM
results of each family (and the real host-local's), the per-family plan, the
CNI result, CHECK's prevResult, and whole ADDs through the real plugin, the
real host-local and a real agent, with only the veth wiring (root) replaced
by a recorder. The wiring itself is tests/agent/test_cni_ipv6.py (privileged)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface
from pathlib import Path

import pytest

from agent.api.client import AgentClient
from agent.cni import net as cni_net
from agent.cni import plugin as cni
from agent.cni import sysctl
from agent.cni.addressing import LINK_LOCAL_GATEWAY, IPv4Plan, IPv6Plan, Plan, plan
from agent.cni.errors import CniError
from agent.cni.ipam import exec_ipam, pod_addresses
from agent.cni.net import Wired
from agent.cni.result import build_result
from tests.agent.conftest import Rig

HOST_LOCAL_DIR = "/usr/lib/cni"
needs_host_local = pytest.mark.skipif(not Path(HOST_LOCAL_DIR, "host-local").exists(), reason="the host-local IPAM plugin is not installed")

# What host-local 1.1 answers for `ranges: [[10.244.9.0/29], [fd00:10:244:9::/64]]`.
DUAL = {
    "cniVersion": "1.0.0",
    "ips": [
        {"address": "10.244.9.2/29", "gateway": "10.244.9.1"},
        {"address": "fd00:10:244:9::2/64", "gateway": "fd00:10:244:9::1"},
    ],
    "dns": {},
}


# --- IPAM results -------------------------------------------------------------------

def test_a_dual_stack_result_gives_one_address_of_each_family() -> None:
    r = pod_addresses(DUAL)
    assert r.ipv4 is not None and r.ipv4.interface == IPv4Interface("10.244.9.2/29") and r.ipv4.gateway == IPv4Address("10.244.9.1")
    assert r.ipv6 is not None and r.ipv6.interface == IPv6Interface("fd00:10:244:9::2/64") and r.ipv6.gateway == IPv6Address("fd00:10:244:9::1")


def test_an_ipv6_only_result_and_an_old_versioned_one() -> None:
    r = pod_addresses({"cniVersion": "0.3.1", "ips": [{"version": "6", "address": "fd00::2/64", "gateway": "fd00::1"}]})
    assert r.ipv4 is None and r.ipv6 is not None and str(r.ipv6.interface.ip) == "fd00::2"


def test_an_ipv4_only_result_reads_as_before() -> None:
    r = pod_addresses({"ips": [{"address": "10.1.0.5/24"}, {"address": "10.2.0.5/24"}]})
    assert r.ipv6 is None and r.ipv4 is not None and str(r.ipv4.interface) == "10.1.0.5/24" and r.ipv4.gateway is None


@pytest.mark.parametrize(
    "result, words",
    [
        pytest.param({"ips": []}, "no IPv4 or IPv6 address", id="none"),
        pytest.param({"ips": [{"address": "not-an-address"}, {"gateway": "10.0.0.1"}]}, "no IPv4 or IPv6 address", id="garbage"),
        pytest.param({"ips": "10.0.0.1"}, "no IPv4 or IPv6 address", id="not-a-list"),
        pytest.param({"ips": [{"address": "fd00::2/64", "gateway": "10.0.0.1"}]}, "not an IPv6 address", id="gateway-of-the-other-family"),
        pytest.param({"ips": [{"address": "10.0.0.2/24", "gateway": "nope"}]}, "not an IPv4 address", id="gateway-garbage"),
    ],
)
def test_unusable_ipam_results_are_ipam_errors(result: dict, words: str) -> None:
    with pytest.raises(CniError) as err:
        pod_addresses(result)
    assert err.value.code == 101 and words in err.value.msg


@needs_host_local
@pytest.mark.parametrize(
    "ranges, want",
    [
        pytest.param([[{"subnet": "10.244.9.0/29"}], [{"subnet": "fd00:10:244:9::/64"}]], ("10.244.9.2", "fd00:10:244:9::2"), id="dual"),
        pytest.param([[{"subnet": "fd00:10:244:9::/64"}]], (None, "fd00:10:244:9::2"), id="ipv6-only"),
    ],
)
def test_host_local_with_ranges_of_both_families(tmp_path: Path, ranges: list, want: tuple) -> None:
    conf = {"cniVersion": "1.0.0", "name": "ciliate", "type": "ciliate-cni", "ipam": {"type": "host-local", "dataDir": str(tmp_path), "ranges": ranges}}
    env = {"CNI_CONTAINERID": "c1", "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "eth0", "CNI_PATH": HOST_LOCAL_DIR}
    r = pod_addresses(exec_ipam("ADD", json.dumps(conf).encode(), "host-local", env, (HOST_LOCAL_DIR,)))
    assert (str(r.ipv4.interface.ip) if r.ipv4 else None, str(r.ipv6.interface.ip) if r.ipv6 else None) == want
    assert r.ipv6 is not None and str(r.ipv6.gateway) == "fd00:10:244:9::1"
    exec_ipam("DEL", json.dumps(conf).encode(), "host-local", env, (HOST_LOCAL_DIR,))
    assert not [p for p in (tmp_path / "ciliate").iterdir() if p.name[0].isdigit() or ":" in p.name], "a lease outlived DEL"


# --- the plan -------------------------------------------------------------------------

def test_plan_for_both_families() -> None:
    p = plan(pod_addresses(DUAL))
    assert p.ipv4 == IPv4Plan(IPv4Address("10.244.9.2"), IPv4Address("10.244.9.1"))
    # The pod routes through the link-local gateway; the range's gateway is the node's address toward pods.
    assert p.ipv6 == IPv6Plan(IPv6Address("fd00:10:244:9::2"), IPv6Address("fd00:10:244:9::1"), IPv6Address("fe80::1"))


def test_plan_without_gateways_takes_each_ranges_first_host() -> None:
    p = plan(pod_addresses({"ips": [{"address": "10.9.0.7/24"}, {"address": "fd00:9::7/64"}]}))
    assert p.ipv4 is not None and str(p.ipv4.gateway) == "10.9.0.1"
    assert p.ipv6 is not None and str(p.ipv6.host_address) == "fd00:9::1" and p.ipv6.gateway == LINK_LOCAL_GATEWAY


@pytest.mark.parametrize(
    "ips, words",
    [
        pytest.param([{"address": "fe80::5/64"}], "link-local", id="link-local"),
        pytest.param([{"address": "ff02::5/64"}], "multicast", id="multicast"),
        pytest.param([{"address": "fd00:9::7/128"}], "no other address for the node", id="no-room-for-the-node"),
    ],
)
def test_plan_refuses_an_ipv6_address_no_pod_can_have(ips: list, words: str) -> None:
    with pytest.raises(CniError) as err:
        plan(pod_addresses({"ips": ips}))
    assert err.value.code == 7 and words in err.value.msg


def test_an_mtu_ipv6_cannot_run_on_is_refused_before_anything_is_wired() -> None:
    with pytest.raises(CniError) as err:
        plan(pod_addresses(DUAL), mtu=1200)
    assert err.value.code == 7 and "1280" in err.value.msg
    assert plan(pod_addresses({"ips": [DUAL["ips"][0]]}), mtu=1200).ipv4 is not None  # IPv4 only: as before


# --- the result ---------------------------------------------------------------------

def _dual_wired_and_plan() -> tuple[Wired, Plan]:
    p = plan(pod_addresses(DUAL))
    w = Wired("lxc1", "aa:aa:aa:aa:aa:aa", "bb:bb:bb:bb:bb:bb", IPv4Interface("10.244.9.2/32"), IPv6Interface("fd00:10:244:9::2/128"))
    return w, p


def test_result_lists_both_addresses_on_the_pods_interface() -> None:
    w, p = _dual_wired_and_plan()
    r = build_result("1.0.0", wired=w, plan=p, ifname="eth0", netns="/var/run/netns/x")
    assert [ip["address"] for ip in r["ips"]] == ["10.244.9.2/32", "fd00:10:244:9::2/128"]
    assert all(r["interfaces"][ip["interface"]] == {"name": "eth0", "mac": "bb:bb:bb:bb:bb:bb", "sandbox": "/var/run/netns/x"} for ip in r["ips"])
    assert [ip["gateway"] for ip in r["ips"]] == ["10.244.9.1", "fe80::1"]
    assert r["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.244.9.1"}, {"dst": "::/0", "gw": "fe80::1"}]
    assert all("version" not in ip for ip in r["ips"])


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0"])
def test_older_results_name_each_addresses_version(version: str) -> None:
    w, p = _dual_wired_and_plan()
    r = build_result(version, wired=w, plan=p, ifname="eth0", netns="/x")
    assert [ip["version"] for ip in r["ips"]] == ["4", "6"]


def test_an_ipv6_only_result() -> None:
    p = plan(pod_addresses({"ips": [DUAL["ips"][1]]}))
    w = Wired("lxc1", "aa:aa:aa:aa:aa:aa", "bb:bb:bb:bb:bb:bb", None, IPv6Interface("fd00:10:244:9::2/128"))
    r = build_result("1.0.0", wired=w, plan=p, ifname="eth0", netns="/x")
    assert [ip["address"] for ip in r["ips"]] == ["fd00:10:244:9::2/128"] and r["routes"] == [{"dst": "::/0", "gw": "fe80::1"}]


def test_checks_prev_result_round_trips() -> None:
    """CHECK reads the pod's addresses back from the result ADD gave."""
    w, p = _dual_wired_and_plan()
    prev = pod_addresses(build_result("1.0.0", wired=w, plan=p, ifname="eth0", netns="/x"), "prevResult")
    assert prev.ipv4 is not None and prev.ipv6 is not None
    assert (prev.ipv4.interface.ip, prev.ipv6.interface.ip) == (IPv4Address("10.244.9.2"), IPv6Address("fd00:10:244:9::2"))


def test_sysctl_in_a_namespace_that_is_gone_is_a_cni_error() -> None:
    with pytest.raises(CniError) as err:
        sysctl.write_in_netns("/nonexistent/netns", [("/proc/sys/net/ipv6/conf/eth0/disable_ipv6", "0")])
    assert err.value.code == 5 and "/nonexistent/netns" in err.value.msg


# --- whole ADDs: real plugin, real host-local, real agent; wiring recorded --------------

class Veths:
    """Stands in for net.add/remove/check (which need root): records each plan."""

    def __init__(self) -> None:
        self.plans: dict[str, Plan] = {}

    def add(self, netns: str, ifname: str, host_if: str, plan: Plan, mtu: int | None) -> Wired:
        self.plans[host_if] = plan
        return Wired(
            host_if, "aa:aa:aa:aa:aa:aa", "bb:bb:bb:bb:bb:bb",
            IPv4Interface(f"{plan.ipv4.address}/32") if plan.ipv4 else None,
            IPv6Interface(f"{plan.ipv6.address}/128") if plan.ipv6 else None,
        )

    def remove(self, host_if: str) -> bool:
        return self.plans.pop(host_if, None) is not None

    def check(self, netns: str, ifname: str, host_if: str, ipv4, ipv6) -> None:
        p = self.plans[host_if]
        assert (p.ipv4.address if p.ipv4 else None, p.ipv6.address if p.ipv6 else None) == (ipv4, ipv6)


@pytest.fixture
def veths(monkeypatch) -> Iterator[Veths]:
    v = Veths()
    monkeypatch.setattr(cni_net, "add", v.add)
    monkeypatch.setattr(cni_net, "remove", v.remove)
    monkeypatch.setattr(cni_net, "check", v.check)
    yield v


def _conf(socket: Path, leases: Path, ranges: list) -> dict:
    return {
        "cniVersion": "1.0.0", "name": "ciliate", "type": "ciliate-cni", "agentSocket": str(socket), "waitSeconds": 5,
        "ipam": {"type": "host-local", "dataDir": str(leases), "ranges": ranges},
        "args": {"cni": {"labels": [{"key": "app", "value": "web"}]}},
    }


def _env(command: str, container: str) -> dict:
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "eth0", "CNI_PATH": HOST_LOCAL_DIR}


@needs_host_local
async def test_a_dual_stack_add_check_and_del(tmp_path: Path, short_dir: Path, veths: Veths, monkeypatch) -> None:
    rig = Rig(tmp_path)
    rig.policy_dir.mkdir()
    agent = rig.agent(socket_path=short_dir / "agent.sock")
    await agent.start()
    monkeypatch.setattr(cni, "_client", lambda conf, timeout=None: AgentClient(short_dir / "agent.sock", timeout=10))
    conf = _conf(short_dir / "agent.sock", tmp_path / "ipam", [[{"subnet": "10.244.9.0/29"}], [{"subnet": "fd00:10:244:9::/64"}]])
    try:
        code, out = await asyncio.to_thread(cni.run, json.dumps(conf).encode(), _env("ADD", "web-1"))
        assert code == 0, out
        result = json.loads(out)
        assert [ip["address"] for ip in result["ips"]] == ["10.244.9.2/32", "fd00:10:244:9::2/128"]
        (ep,) = agent.table.views()
        assert (str(ep.ipv4), str(ep.ipv6)) == ("10.244.9.2", "fd00:10:244:9::2") and ep.state.value == "ready"
        code, out = await asyncio.to_thread(cni.run, json.dumps({**conf, "prevResult": result}).encode(), _env("CHECK", "web-1"))
        assert code == 0, out
        code, out = await asyncio.to_thread(cni.run, json.dumps(conf).encode(), _env("DEL", "web-1"))
        assert code == 0, out
        assert agent.table.views() == [] and veths.plans == {}
        assert not [p for p in (tmp_path / "ipam" / "ciliate").iterdir() if p.name[0].isdigit() or ":" in p.name]
    finally:
        await agent.stop()


@needs_host_local
async def test_an_ipv6_only_add_on_a_node_without_ipv6_registers_an_endpoint_kept_dropped(tmp_path: Path, short_dir: Path, veths: Veths, monkeypatch, capfd) -> None:
    rig = Rig(tmp_path)
    rig.policy_dir.mkdir()
    rig.datapath.requires_ipv4 = True  # as the kernel datapath on a node with IPv6 disabled
    agent = rig.agent(socket_path=short_dir / "agent.sock")
    await agent.start()
    monkeypatch.setattr(cni, "_client", lambda conf, timeout=None: AgentClient(short_dir / "agent.sock", timeout=10))
    conf = _conf(short_dir / "agent.sock", tmp_path / "ipam", [[{"subnet": "fd00:10:244:9::/64"}]])
    try:
        code, out = await asyncio.to_thread(cni.run, json.dumps(conf).encode(), _env("ADD", "v6-1"))
        assert code == 0, out  # the pod is wired; the datapath keeps its traffic dropped
        assert [ip["address"] for ip in json.loads(out)["ips"]] == ["fd00:10:244:9::2/128"]
        (ep,) = agent.table.views()
        assert ep.ipv4 is None and str(ep.ipv6) == "fd00:10:244:9::2"
        assert ep.state.value == "not-ready" and "IPv4" in (ep.reason or "")
        assert "not-ready" in capfd.readouterr().err
        report = agent.regenerator.last_report
        assert report is not None and not report.failed[ep.id].transient  # no pointless retries
    finally:
        await agent.stop()
