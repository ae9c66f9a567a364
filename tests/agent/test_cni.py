"""ciliate-cni: config and env parsing, error JSON, result shape, IPAM delegation to the
real host-local plugin, and (privileged) one ADD/CHECK/DEL against a real netns."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from agent.cni.addressing import IPv4Plan, Plan
from agent.cni.plugin import run
from agent.cni.config import endpoint_labels, host_ifname, parse_env, parse_netconf
from agent.cni.errors import CniError
from agent.cni.ipam import exec_ipam, pod_addresses
from agent.cni.net import Wired
from agent.cni.result import build_result

HOST_LOCAL_DIR = "/usr/lib/cni"


def conf(**over) -> dict:
    base = {
        "cniVersion": "1.0.0",
        "name": "ciliate",
        "type": "ciliate-cni",
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.7.0/24"}]]},
    }
    base.update(over)
    return base


ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0", "CNI_PATH": HOST_LOCAL_DIR}


@pytest.mark.parametrize(
    "stdin, env, code, words",
    [
        pytest.param(b"{nope", ENV, 6, "not JSON", id="not-json"),
        pytest.param(json.dumps(conf(cniVersion="9.9.9")).encode(), ENV, 1, "9.9.9", id="bad-version"),
        pytest.param(json.dumps(conf(ipam={})).encode(), ENV, 7, "ipam.type", id="no-ipam"),
        pytest.param(json.dumps({k: v for k, v in conf().items() if k != "name"}).encode(), ENV, 7, "name", id="no-name"),
        pytest.param(json.dumps(conf()).encode(), {**ENV, "CNI_COMMAND": "FROB"}, 4, "CNI_COMMAND", id="bad-command"),
        pytest.param(json.dumps(conf()).encode(), {k: v for k, v in ENV.items() if k != "CNI_NETNS"}, 4, "CNI_NETNS", id="no-netns"),
        pytest.param(json.dumps(conf()).encode(), {**ENV, "CNI_ARGS": "IgnoreUnknown"}, 4, "CNI_ARGS", id="bad-cni-args"),
        pytest.param(json.dumps(conf()).encode(), {**ENV, "CNI_NETNS": "/nonexistent/netns"}, 3, "does not exist", id="netns-gone"),
        pytest.param(json.dumps(conf(ipam={"type": "no-such-ipam"})).encode(), {**ENV, "CNI_NETNS": "/proc/self/ns/net"}, 7, "no-such-ipam", id="ipam-missing"),
    ],
)
def test_errors_are_cni_error_json(stdin: bytes, env: dict, code: int, words: str) -> None:
    rc, out = run(stdin, env)
    body = json.loads(out)
    assert rc != 0 and body["code"] == code and words in body["msg"]
    assert body["cniVersion"] in ("1.0.0",)


def test_version_answers_in_the_requested_version() -> None:
    rc, out = run(json.dumps({"cniVersion": "0.4.0"}).encode(), {"CNI_COMMAND": "VERSION"})
    body = json.loads(out)
    assert rc == 0 and body["cniVersion"] == "0.4.0" and "1.0.0" in body["supportedVersions"]


@pytest.mark.parametrize(
    "extra, cni_args, labels",
    [
        pytest.param({"args": {"cni": {"labels": [{"key": "org", "value": "empire"}, {"key": "class", "value": "tiefighter"}]}}}, "", {"org": "empire", "class": "tiefighter"}, id="args-cni-labels"),
        pytest.param({}, "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-1", {"k8s:io.kubernetes.pod.namespace": "prod"}, id="k8s-cni-args"),
        pytest.param({}, "", {}, id="none"),
    ],
)
def test_labels(extra: dict, cni_args: str, labels: dict) -> None:
    c = parse_netconf(json.dumps(conf(**extra)).encode())
    e = parse_env({**ENV, "CNI_ARGS": cni_args})
    assert endpoint_labels(c, e) == labels


def test_host_ifname_is_stable_and_fits() -> None:
    a = host_ifname("abc", "eth0")
    assert a == host_ifname("abc", "eth0") != host_ifname("abc", "eth1") and len(a) <= 15 and a.startswith("lxc")


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_result_shape(version: str) -> None:
    wired = Wired("lxc1", "aa:aa:aa:aa:aa:aa", "bb:bb:bb:bb:bb:bb", IPv4Interface("10.1.0.5/32"), None)
    plan = Plan(IPv4Plan(IPv4Address("10.1.0.5"), IPv4Address("10.1.0.1")), None)
    r = build_result(version, wired=wired, plan=plan, ifname="eth0", netns="/var/run/netns/x")
    assert r["cniVersion"] == version
    assert r["interfaces"][r["ips"][0]["interface"]]["sandbox"] == "/var/run/netns/x"
    assert r["ips"][0]["address"] == "10.1.0.5/32" and r["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]
    assert ("version" in r["ips"][0]) == (not version.startswith("1.")) and len(r["ips"]) == 1


def test_ipam_delegation_to_host_local(tmp_path: Path) -> None:
    c = conf(ipam={"type": "host-local", "dataDir": str(tmp_path), "ranges": [[{"subnet": "10.244.9.0/29"}]]})
    stdin = json.dumps(c).encode()
    env = {**ENV, "CNI_PATH": HOST_LOCAL_DIR, "CNI_NETNS": "/proc/self/ns/net"}
    got = [pod_addresses(exec_ipam("ADD", stdin, "host-local", {**env, "CNI_CONTAINERID": f"c{i}"}, (HOST_LOCAL_DIR,))).ipv4 for i in range(2)]
    assert [str(g.interface.ip) for g in got] == ["10.244.9.2", "10.244.9.3"]
    assert all(str(g.gateway) == "10.244.9.1" for g in got)
    exec_ipam("DEL", stdin, "host-local", {**env, "CNI_CONTAINERID": "c0"}, (HOST_LOCAL_DIR,))
    exec_ipam("DEL", stdin, "host-local", {**env, "CNI_CONTAINERID": "c0"}, (HOST_LOCAL_DIR,))  # twice: idempotent
    again = pod_addresses(exec_ipam("ADD", stdin, "host-local", {**env, "CNI_CONTAINERID": "c9"}, (HOST_LOCAL_DIR,))).ipv4
    assert str(again.interface.ip) in ("10.244.9.2", "10.244.9.4")


def test_ipam_exhaustion_is_reported_with_the_plugins_words(tmp_path: Path) -> None:
    c = conf(ipam={"type": "host-local", "dataDir": str(tmp_path), "ranges": [[{"subnet": "10.244.9.0/30"}]]})
    stdin = json.dumps(c).encode()
    env = {**ENV, "CNI_NETNS": "/proc/self/ns/net"}
    exec_ipam("ADD", stdin, "host-local", {**env, "CNI_CONTAINERID": "a"}, (HOST_LOCAL_DIR,))
    with pytest.raises(CniError) as err:
        exec_ipam("ADD", stdin, "host-local", {**env, "CNI_CONTAINERID": "b"}, (HOST_LOCAL_DIR,))
    assert err.value.code == 101 and "host-local ADD failed" in err.value.msg


# --- privileged: one real pod wired into a netns and registered with an agent --------------



HOST_NS = "cilagt-cni-host"  # stands in for the host: the plugin's veths and ciliate_host land here
POD_NS = "cilagt-cni-test"


@pytest.fixture
def netns() -> Iterator[str]:
    for name in (HOST_NS, POD_NS):
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield f"/var/run/netns/{POD_NS}"
    finally:
        for name in (POD_NS, HOST_NS):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _host(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "-n", HOST_NS, *cmd], capture_output=True, text=True)


async def _cni(command: str, stdin: dict, env: dict, host_ns: str = HOST_NS) -> tuple[int, dict | None]:
    """ciliate-cni run as the runtime runs it, in `host_ns` (standing in for the host)."""
    # nsenter, not `ip netns exec`: the latter remounts /sys, hiding bpffs.
    proc = await asyncio.create_subprocess_exec(
        "nsenter", f"--net=/var/run/netns/{host_ns}", sys.executable, "-m", "agent.cni", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, **env, "CNI_COMMAND": command}, cwd=Path(__file__).resolve().parents[2],
    )
    out, _ = await proc.communicate(json.dumps(stdin).encode())
    return proc.returncode, (json.loads(out) if out.strip() else None)


@pytest.mark.privileged
async def test_add_check_del_with_a_real_netns(rig, netns: str, short_dir: Path) -> None:
    short = short_dir
    agent = rig.agent(socket_path=short / "agent.sock")
    await agent.start()
    try:
        c = conf(
            agentSocket=str(short / "agent.sock"),
            ipam={"type": "host-local", "dataDir": str(short / "ipam"), "ranges": [[{"subnet": "10.244.77.0/24"}]]},
            args={"cni": {"labels": [{"key": "org", "value": "empire"}]}},
        )
        env = {"CNI_CONTAINERID": "cilagt-ctr", "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_PATH": HOST_LOCAL_DIR}
        rc, result = await _cni("ADD", c, env)
        assert rc == 0, result
        assert result["ips"][0]["address"] == "10.244.77.2/32"
        (ep,) = agent.table.views()
        assert ep.state.value == "ready" and ep.labels == {"org": "empire"} and str(ep.ipv4) == "10.244.77.2"
        assert ep.host_ifname == result["interfaces"][0]["name"]
        inside = subprocess.run(["ip", "-n", POD_NS, "-j", "addr", "show", "eth0"], capture_output=True, text=True, check=True)
        assert "10.244.77.2" in inside.stdout
        routes = subprocess.run(["ip", "-n", POD_NS, "route"], capture_output=True, text=True, check=True).stdout
        assert "default via 10.244.77.1" in routes
        assert "10.244.77.1/32" in _host("addr", "show", "ciliate_host").stdout  # the gateway lives on the host
        assert f"10.244.77.2 dev {ep.host_ifname}" in _host("route").stdout
        rc, _ = await _cni("CHECK", {**c, "prevResult": result}, env)
        assert rc == 0
        for _ in range(2):  # DEL twice: idempotent
            rc, out = await _cni("DEL", c, env)
            assert rc == 0, out
        assert agent.table.views() == []
        assert _host("link", "show", ep.host_ifname).returncode != 0
        rc, out = await _cni("CHECK", {**c, "prevResult": result}, env)
        assert rc != 0 and out["code"] == 5 and "missing" in out["msg"]
    finally:
        await agent.stop()
        shutil.rmtree(short, ignore_errors=True)
