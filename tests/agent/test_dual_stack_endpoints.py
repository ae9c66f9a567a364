"""Endpoints with an IPv6 address beside (or instead of) IPv4: the model's
rule, the API's refusals naming the field, the table's address uniqueness,
persistence across a restart (old records without ipv6 still load), the
CLI's list and get, flows and `ciliate monitor` with IPv6 addresses, and
a Kubernetes Pod's status.podIPs of both families."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.adapters.kubernetes.kinds import KIND_POD
from agent.adapters.kubernetes.pod_addresses import PodIPs, pod_ips
from agent.adapters.kubernetes.source import KubernetesOptions, KubernetesSource
from agent.cli.monitor import format_flow
from agent.core.endpoint_table import AddressInUse, EndpointTable
from agent.core.flow_enrich import FlowEnricher
from agent.core.models import EndpointCreate, EndpointRecord, FlowEvent
from agent.core.state_store import StateStore
from tests.agent.api_client import api_client
from tests.agent.conftest import Rig
from tests.agent.test_agent_core import started
from tests.agent.test_api import client, run_cli, served  # noqa: F401  (fixture)


def req(name: str, ipv4: str | None = None, ipv6: str | None = None, **labels: str) -> EndpointCreate:
    return EndpointCreate(
        container_id=f"cid-{name}", host_ifname=f"lxc{name}"[:15], labels=labels, name=f"default/{name}",
        ipv4=IPv4Address(ipv4) if ipv4 else None, ipv6=IPv6Address(ipv6) if ipv6 else None,
    )


# --- the model -------------------------------------------------------------------------

@pytest.mark.parametrize("addr", ["2001:db8::5", "2a00:1450:4001::5", "fd00:10:244::5", "fc00::1"])
def test_global_unicast_and_unique_local_addresses_are_endpoint_addresses(addr: str) -> None:
    assert str(EndpointCreate(container_id="c", host_ifname="lxc1", ipv6=addr).ipv6) == str(IPv6Address(addr))


@pytest.mark.parametrize(
    "addr, words",
    [
        ("fe80::5", "link-local"),
        ("ff02::1", "multicast"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("::ffff:10.0.0.1", "IPv4-mapped"),
        ("fec0::1", "site-local"),
        ("100::1", "reserved"),
        ("fd00::5%eth0", "zone"),
        ("10.0.0.5", "not a valid IPv6 address"),
        ("fd00::zz", "not a valid IPv6 address"),
    ],
)
def test_other_ipv6_addresses_are_refused_at_ipv6(addr: str, words: str) -> None:
    with pytest.raises(ValidationError) as err:
        EndpointCreate(container_id="c", host_ifname="lxc1", ipv6=addr)
    (e,) = err.value.errors()
    assert e["loc"] == ("ipv6",) and words in e["msg"]


def test_an_old_record_without_ipv6_loads_and_a_new_one_round_trips(tmp_path: Path) -> None:
    old = {"id": 3, "container_id": "c", "host_ifname": "lxc3", "ifname": "eth0", "ipv4": "10.0.0.3", "labels": {"app": "a"}}
    (tmp_path / "endpoints.json").write_text(json.dumps({"format": 1, "endpoints": [old]}))
    store = StateStore(tmp_path)
    (rec,) = store.load_endpoints()
    assert rec.ipv6 is None and str(rec.ipv4) == "10.0.0.3"
    dual = rec.model_copy(update={"ipv6": IPv6Address("fd00::3")})
    v6only = EndpointRecord(id=4, container_id="d", host_ifname="lxc4", ipv6=IPv6Address("fd00::4"))
    store.save_endpoints([dual, v6only])
    saved = json.loads((tmp_path / "endpoints.json").read_text())["endpoints"]
    assert [(e["ipv4"], e["ipv6"]) for e in saved] == [("10.0.0.3", "fd00::3"), (None, "fd00::4")]
    assert store.load_endpoints() == [dual, v6only]


# --- the table ---------------------------------------------------------------------------

def test_two_endpoints_cannot_share_an_ipv6_address(tmp_path: Path) -> None:
    table = EndpointTable(StateStore(tmp_path))
    a, _ = table.upsert(req("a", "10.0.0.1", "fd00::1"))
    with pytest.raises(AddressInUse, match=r"^ipv6: fd00::1 is already the address of endpoint 1"):
        table.upsert(req("b", "10.0.0.2", "fd00::1"))
    b, _ = table.upsert(req("b", None, "fd00::2"))  # IPv6 only
    again, created = table.upsert(req("a", "10.0.0.1", "fd00::1"))  # CNI retries ADD: its own address is no clash
    assert (again.id, created) == (a.id, False)
    assert table.holding(IPv6Address("fd00::2")) == b and table.holding(IPv4Address("10.0.0.1")) == a
    table.remove(b.id)
    assert table.holding(IPv6Address("fd00::2")) is None  # the index follows the table


async def test_both_addresses_survive_a_restart(rig: Rig) -> None:
    agent = await started(rig)
    await agent.create_endpoint(req("web", "10.200.0.5", "fd00:200::5", app="web"), wait=5)
    await agent.create_endpoint(req("v6", None, "fd00:200::6", app="web"), wait=5)
    before = {v.id: (v.ipv4, v.ipv6) for v in agent.table.views()}
    await agent.stop()
    agent = await started(rig)
    try:
        assert {v.id: (v.ipv4, v.ipv6) for v in agent.table.views()} == before
    finally:
        await agent.stop()


# --- the API and CLI ----------------------------------------------------------------

BODY = {"container_id": "c1", "host_ifname": "lxc1", "ipv4": "10.200.0.5", "ipv6": "fd00:200::5", "labels": {"app": "a"}}


async def test_the_api_takes_both_addresses_and_refuses_bad_or_taken_ipv6(rig: Rig) -> None:
    async with api_client(rig) as (_, c):
        r = await c.post("/v1/endpoints", params={"wait": "5"}, json=BODY)
        assert r.status == 201 and ((await r.json())["ipv4"], (await r.json())["ipv6"]) == ("10.200.0.5", "fd00:200::5")
        r = await c.post("/v1/endpoints", json={**BODY, "container_id": "c2", "host_ifname": "lxc2", "ipv4": "10.200.0.6", "ipv6": "fe80::5"})
        body = await r.json()
        assert r.status == 400 and body["detail"].startswith("ipv6: ") and "link-local" in body["detail"]
        r = await c.post("/v1/endpoints", json={**BODY, "container_id": "c2", "host_ifname": "lxc2", "ipv4": "10.200.0.6"})
        body = await r.json()
        assert r.status == 400 and body["detail"].startswith("ipv6: fd00:200::5 is already the address of endpoint 1")
        r = await c.post("/v1/endpoints", params={"wait": "5"}, json={**BODY, "container_id": "c3", "host_ifname": "lxc3", "ipv4": None, "ipv6": "fd00:200::7"})
        assert r.status == 201 and (await r.json())["ipv4"] is None


async def test_cli_endpoint_list_and_get_show_both_addresses(served, capsys) -> None:  # noqa: F811
    _, sock = served
    async with client(sock) as c:
        await c.post("/v1/endpoints", params={"wait": "5"}, json=BODY)
    code, out, _ = await run_cli(["endpoint", "list", "--socket", str(sock)], capsys)
    header, row = out.splitlines()[:2]
    assert code == 0 and header.split()[:4] == ["ID", "NAME", "IPV4", "IPV6"] and row.split()[2:4] == ["10.200.0.5", "fd00:200::5"]
    code, out, _ = await run_cli(["endpoint", "get", "1", "--socket", str(sock)], capsys)
    assert code == 0 and "ipv6:             fd00:200::5" in out.splitlines()


# --- flows --------------------------------------------------------------------------------

def test_monitor_brackets_an_ipv6_address_before_its_port() -> None:
    e = FlowEvent(time=0, type="l7", src_ip="fd00::5", src_port=40000, dst_ip="10.0.0.1", dst_port=80, dst_pod="web", dst_namespace="default",
                  method="GET", path="/", status=200, verdict="forwarded")
    line = format_flow(e)
    assert " [fd00::5]:40000 -> default/web:80 l7 " in line
    assert " fd00::5 -> " in format_flow(e.model_copy(update={"src_port": None}))


async def test_an_ipv6_flow_is_told_whose_it_is(rig: Rig) -> None:
    agent = await started(rig)
    try:
        view, _ = await agent.create_endpoint(req("web", "10.200.0.5", "fd00:200::5", app="web"), wait=5)
        enrich = FlowEnricher(agent.table, lambda: agent.regenerator.last_state if agent.regenerator else None, dict)
        got = enrich.enrich({"type": "l7", "src_ip": "fd00:200::5", "src_port": 40000, "dst_ip": "fd00:200::99", "dst_port": 80})
        assert (got["src_endpoint_id"], got["src_pod"], got["src_namespace"]) == (view.id, "web", "default")
        assert got["src_identity"] == view.identity and "dst_endpoint_id" not in got
        assert enrich.enrich({"src_ip": "[fd00:200::5]"}).get("src_endpoint_id") is None  # not an address: left alone
    finally:
        await agent.stop()


# --- Kubernetes: status.podIPs -------------------------------------------------------------

@pytest.mark.parametrize(
    "status, spec, want",
    [
        pytest.param({"podIP": "10.1.0.5", "podIPs": [{"ip": "10.1.0.5"}, {"ip": "fd00:1::5"}]}, {}, PodIPs(IPv4Address("10.1.0.5"), IPv6Address("fd00:1::5")), id="dual"),
        pytest.param({"podIP": "fd00:1::5", "podIPs": [{"ip": "fd00:1::5"}, {"ip": "10.1.0.5"}]}, {}, PodIPs(IPv4Address("10.1.0.5"), IPv6Address("fd00:1::5")), id="ipv6-primary"),
        pytest.param({"podIP": "fd00:1::5", "podIPs": [{"ip": "fd00:1::5"}]}, {}, PodIPs(None, IPv6Address("fd00:1::5")), id="ipv6-only"),
        pytest.param({"podIP": "10.1.0.5"}, {}, PodIPs(IPv4Address("10.1.0.5"), None), id="podIP-only"),
        pytest.param({"podIPs": [{"ip": "nope"}, {"ip": 7}, "x", {"ip": "fd00:1::5"}, {"ip": "fd00:1::6"}]}, {}, PodIPs(None, IPv6Address("fd00:1::5")), id="garbage-skipped"),
        pytest.param({"podIPs": [{"ip": "10.0.0.9"}, {"ip": "fd00::9"}]}, {"hostNetwork": True}, PodIPs(), id="host-network"),
        pytest.param({}, {}, PodIPs(), id="pending"),
    ],
)
def test_a_pods_addresses_from_its_status(status: dict, spec: dict, want: PodIPs) -> None:
    assert pod_ips({"metadata": {"name": "p"}, "spec": spec, "status": status}) == want


def test_kubernetes_health_counts_pods_with_ipv6() -> None:
    src = KubernetesSource(lambda: None, KubernetesOptions(node_name="n1"))  # type: ignore[arg-type,return-value]
    src.objects[KIND_POD] = {
        "default/a": {"status": {"podIPs": [{"ip": "10.1.0.5"}, {"ip": "fd00:1::5"}]}},
        "default/b": {"status": {"podIP": "10.1.0.6"}},
    }
    health = src.health()
    assert (health["pods"], health["pods_ipv6"]) == (2, 1)
