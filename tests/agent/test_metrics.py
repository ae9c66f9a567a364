"""`/metrics` as Prometheus scrapes it: the counters move by what happened.

The agent runs on the fake datapath and proxy; kernel counters, access-log
entries and xDS totals are fed through them, policy changes through files.
Every value is read with prometheus_client's own text parser.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.core.agent import Agent
from agent.core.ports import ProxyCounters, UpstreamPorts
from tests.agent.conftest import Rig
from tests.agent.test_agent_core import L7, add_starwars, settle

L4 = {"name": "l4", "selector": {"class": "deathstar"}, "allowFrom": {"org": "empire"}, "port": 80}
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


@pytest.fixture
async def scraped(rig: Rig) -> AsyncIterator[tuple[Agent, int]]:
    short = Path(tempfile.mkdtemp(prefix="cil-met-"))  # unix socket paths are limited to 107 bytes
    agent = rig.agent(socket_path=short / "agent.sock", metrics_port=0)
    await agent.start()
    try:
        yield agent, agent.services[0].metrics_port
    finally:
        await agent.stop()
        shutil.rmtree(short, ignore_errors=True)


class Scrape:
    def __init__(self, text: str) -> None:
        self.samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when absent (a counter nobody moved yet)."""
        found = [s.value for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
        assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
        return found[0] if found else 0.0


async def scrape(port: int) -> Scrape:
    async with httpx.AsyncClient() as h:
        r = await h.get(f"http://127.0.0.1:{port}/metrics")
    assert r.status_code == 200
    return Scrape(r.text)


async def wait_for_flows(agent: Agent, n: int) -> None:
    for _ in range(500):
        if agent.flows.published >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{agent.flows.published} flow events published, expected {n}")


async def test_drops_and_forwards_come_from_the_kernel_counters(scraped, rig: Rig) -> None:
    agent, port = scraped
    before = await scrape(port)
    # The per-CPU counters count every dropped packet, also those whose ring
    # buffer event was lost: no flow event is sent here at all.
    rig.datapath.count("drop", "policy-deny", "ingress", 3)
    rig.datapath.count("drop", "no-policy-match", "egress", 2)
    rig.datapath.count("forward", "policy-allow", "ingress", 5)
    rig.datapath.count("redirect", "policy-redirect", "ingress", 4)
    after = await scrape(port)
    assert before.value("ciliate_drop_count_total", reason="policy-deny", direction="ingress") == 0
    assert after.value("ciliate_drop_count_total", reason="policy-deny", direction="ingress") == 3
    assert after.value("ciliate_drop_count_total", reason="no-policy-match", direction="egress") == 2
    assert after.value("ciliate_forward_count_total", reason="policy-allow", direction="ingress") == 5
    # A flow handed to the proxy is forwarded too (to Envoy), under its own reason.
    assert after.value("ciliate_forward_count_total", reason="policy-redirect", direction="ingress") == 4
    rig.datapath.count("drop", "policy-deny", "ingress", 7)
    assert (await scrape(port)).value("ciliate_drop_count_total", reason="policy-deny", direction="ingress") == 10


async def test_l7_requests_by_verdict_from_the_access_log(scraped, rig: Rig) -> None:
    agent, port = scraped
    for status, verdict in ((403, "denied"), (200, "forwarded"), (200, "forwarded")):
        rig.proxy.log.put_nowait({"type": "l7", "method": "GET", "path": "/", "status": status, "verdict": verdict})
    await wait_for_flows(agent, 3)
    s = await scrape(port)
    assert s.value("ciliate_policy_l7_total", rule="received", proxy_type="http") == 3
    assert s.value("ciliate_policy_l7_total", rule="forwarded", proxy_type="http") == 2
    assert s.value("ciliate_policy_l7_total", rule="denied", proxy_type="http") == 1
    assert s.value("ciliate_flow_events_total", type="l7") == 3


async def test_policy_changes_errors_delay_and_regenerations(scraped, rig: Rig) -> None:
    agent, port = scraped
    await add_starwars(agent)
    before = await scrape(port)
    rig.write_policy("l4.json", [L4])
    await settle(agent)
    rig.write_policy("bad.json", "not json")
    await settle(agent)
    s = await scrape(port)
    assert s.value("ciliate_policy_change_total", outcome="success") - before.value("ciliate_policy_change_total", outcome="success") == 1
    assert s.value("ciliate_policy_change_total", outcome="failure") - before.value("ciliate_policy_change_total", outcome="failure") == 1
    assert s.value("ciliate_policy_import_errors_total") - before.value("ciliate_policy_import_errors_total") == 1
    # One change reached the kernel: one observation of change -> enforced.
    assert s.value("ciliate_policy_implementation_delay_seconds_count", source="file") == 1
    assert 0 < s.value("ciliate_policy_implementation_delay_seconds_sum", source="file") < 5
    assert s.value("ciliate_endpoint_regeneration_time_stats_seconds_count", scope="total") > before.value(
        "ciliate_endpoint_regeneration_time_stats_seconds_count", scope="total"
    )
    assert s.value("ciliate_policy_max_revision") == agent.queue.revision
    # The compiler refusing a policy is an import error too.
    rig.compiler.reject.add("l7")
    rig.write_policy("l7.json", [L7])
    await settle(agent)
    assert (await scrape(port)).value("ciliate_policy_import_errors_total") - s.value("ciliate_policy_import_errors_total") == 1


async def test_endpoints_identities_and_map_pressure(scraped, rig: Rig) -> None:
    agent, port = scraped
    ids = await add_starwars(agent)
    rig.write_policy("l4.json", [L4])
    await settle(agent)
    s = await scrape(port)
    assert s.value("ciliate_endpoint_state", endpoint_state="ready") == 3
    assert s.value("ciliate_endpoint_state", endpoint_state="not-ready") == 0
    assert s.value("ciliate_endpoint") == 3
    assert s.value("ciliate_identity", type="endpoint") == 3  # three label sets
    assert s.value("ciliate_identity", type="reserved") >= 2
    # The deathstar admits two empire identities on port 80: 2 of 16384.
    assert s.value("ciliate_bpf_map_pressure", map_name=f"ciliate_policy_{ids['deathstar']}") == pytest.approx(2 / 16384)
    rig.datapath.map_capacity = 4
    await agent.delete_endpoint(ids["xwing"])
    await agent.queue.drain(5)
    s = await scrape(port)
    assert s.value("ciliate_endpoint_state", endpoint_state="ready") == 2
    assert s.value("ciliate_bpf_map_pressure", map_name=f"ciliate_policy_{ids['deathstar']}") == pytest.approx(2 / 4)


async def test_xds_and_envoy_totals_come_from_the_proxy(scraped, rig: Rig) -> None:
    agent, port = scraped
    rig.proxy.xds = ProxyCounters(xds_pushes={LDS: 3, CDS: 2}, xds_acks={LDS: 2, CDS: 2}, xds_nacks={LDS: 1}, envoy_restarts=2)
    s = await scrape(port)
    assert s.value("ciliate_xds_pushes_total", type_url=LDS) == 3
    assert s.value("ciliate_xds_acks_total", type_url=CDS) == 2
    assert s.value("ciliate_xds_nacks_total", type_url=LDS) == 1
    assert s.value("ciliate_envoy_restarts_total") == 2


async def test_a_failing_datapath_read_keeps_the_last_counters(scraped, rig: Rig) -> None:
    agent, port = scraped
    rig.datapath.count("drop", "policy-deny", "ingress", 3)
    await scrape(port)

    async def broken():
        raise OSError("bpf(cmd=1): Operation not permitted")

    rig.datapath.counters = broken  # type: ignore[method-assign]
    s = await scrape(port)
    assert s.value("ciliate_drop_count_total", reason="policy-deny", direction="ingress") == 3


async def test_upstream_ports_assigned_and_refused_by_the_datapath(scraped, rig: Rig) -> None:
    agent, port = scraped
    rig.datapath.upstream_ports = UpstreamPorts("61000-65535", True, assigned=7, busy=3, exhausted=1)
    s = await scrape(port)
    assert s.value("ciliate_proxy_upstream_ports_assigned_total") == 7
    assert s.value("ciliate_proxy_upstream_ports_exhausted_total") == 1
    assert s.value("ciliate_proxy_upstream_port_probes_busy_total") == 3
    status = agent.status().upstream_ports
    assert status is not None and status.by_datapath and status.assigned == 7 and status.exhausted == 1
    # Not set up by the datapath: no counters that would read as zero refusals.
    rig.datapath.upstream_ports = UpstreamPorts("32768-60999", False, detail="no cgroup v2")
    s = await scrape(port)
    assert not any(x.name.startswith("ciliate_proxy_upstream_port") for x in s.samples)
    status = agent.status().upstream_ports
    assert status is not None and not status.by_datapath and status.detail == "no cgroup v2"
