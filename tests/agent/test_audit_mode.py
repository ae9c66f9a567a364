"""Policy audit mode through the API and CLI: the endpoint's setting is
persisted in its record (and outlives a CNI re-ADD and an agent restart),
reaches the datapath and the proxy as EndpointPolicy.audit at the next
regeneration, falls back to the agent's --policy-audit-mode, and audited
flows show up as verdict audit in the flow stream and in the metrics."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from agent.cli import ciliate as cli
from agent.cli.agent_commands import endpoint_settings
from agent.core.agent import Agent
from agent.core.flow_filter import FlowFilter
from policy.compiled import CompiledState
from tests.agent.conftest import Rig

BODY = {"container_id": "c1", "host_ifname": "lxc1", "ipv4": "10.200.0.5", "labels": {"class": "deathstar", "org": "empire"}}


@pytest.fixture
async def short_dir() -> AsyncIterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="cil-aud-"))  # unix socket paths are limited to 107 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _client(sock: Path) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(sock)), base_url="http://agent")


def _applied(rig: Rig) -> list[CompiledState]:
    """Record every state the fake kernel is told to enforce."""
    seen: list[CompiledState] = []
    real = rig.datapath.apply

    async def apply(state: CompiledState):
        seen.append(state)
        return await real(state)

    rig.datapath.apply = apply  # type: ignore[method-assign]
    return seen


async def _start(rig: Rig, sock: Path, **cfg) -> Agent:
    agent = rig.agent(socket_path=sock, metrics_port=0, **cfg)
    await agent.start()
    return agent


async def test_audit_mode_per_endpoint_through_the_api(rig: Rig, short_dir: Path) -> None:
    applied = _applied(rig)
    sock = short_dir / "agent.sock"
    agent = await _start(rig, sock)
    try:
        async with _client(sock) as c:
            ep = (await c.post("/v1/endpoints", params={"wait": "5"}, json=BODY)).json()
            assert ep["audited"] is False and ep["policy_audit_mode"] is None
            r = await c.patch(f"/v1/endpoints/{ep['id']}/config", params={"wait": "5"}, json={"policy_audit_mode": True})
            assert r.status_code == 200 and r.json()["audited"] is True and r.json()["policy_audit_mode"] is True
            assert applied[-1].endpoints[ep["id"]].audit
            # CNI retries ADD: the endpoint keeps its setting.
            assert (await c.post("/v1/endpoints", json=BODY)).json()["policy_audit_mode"] is True
            r = await c.patch(f"/v1/endpoints/{ep['id']}/config", params={"wait": "5"}, json={"policy_audit_mode": False})
            assert r.json()["audited"] is False and not applied[-1].endpoints[ep["id"]].audit

            bad = await c.patch(f"/v1/endpoints/{ep['id']}/config", json={"policy_audit_mode": "maybe"})
            assert bad.status_code == 400 and "policy_audit_mode" in bad.json()["detail"]
            unknown = await c.patch(f"/v1/endpoints/{ep['id']}/config", json={"audit": True})
            assert unknown.status_code == 400 and "audit" in unknown.json()["detail"]
            missing = await c.patch("/v1/endpoints/999/config", json={"policy_audit_mode": True})
            assert missing.status_code == 404
            await c.patch(f"/v1/endpoints/{ep['id']}/config", params={"wait": "5"}, json={"policy_audit_mode": True})
    finally:
        await agent.stop()
    # Persisted in the endpoint record: a restarted agent audits it again.
    agent = await _start(rig, sock)
    try:
        await agent.queue.drain(5)
        assert agent.table.record(ep["id"]).policy_audit_mode is True
        assert applied[-1].endpoints[ep["id"]].audit
    finally:
        await agent.stop()


async def test_agent_wide_audit_mode_and_an_endpoint_that_opts_out(rig: Rig, short_dir: Path) -> None:
    applied = _applied(rig)
    sock = short_dir / "agent.sock"
    agent = await _start(rig, sock, policy_audit_mode=True)
    try:
        async with _client(sock) as c:
            ep = (await c.post("/v1/endpoints", params={"wait": "5"}, json=BODY)).json()
            assert ep["audited"] is True and applied[-1].endpoints[ep["id"]].audit
            r = await c.patch(f"/v1/endpoints/{ep['id']}/config", params={"wait": "5"}, json={"policy_audit_mode": False})
            assert r.json()["audited"] is False and not applied[-1].endpoints[ep["id"]].audit
            r = await c.patch(f"/v1/endpoints/{ep['id']}/config", params={"wait": "5"}, json={"policy_audit_mode": None})
            assert r.json()["audited"] is True, "null: back to the agent's default"
    finally:
        await agent.stop()


async def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = await asyncio.to_thread(cli.main, argv)
    out, err = capsys.readouterr()
    return code, out, err


async def test_cli_endpoint_config(rig: Rig, short_dir: Path, capsys) -> None:
    sock = short_dir / "agent.sock"
    agent = await _start(rig, sock)
    try:
        async with _client(sock) as c:
            ep = (await c.post("/v1/endpoints", params={"wait": "5"}, json=BODY)).json()
        s = ["--socket", str(sock)]
        code, out, _ = await _cli(["endpoint", "config", str(ep["id"]), "policy-audit-mode=true", *s], capsys)
        assert code == 0 and "policy-audit-mode=true" in out and "audited now: true" in out
        code, out, _ = await _cli(["endpoint", "list", *s], capsys)
        assert code == 0 and "AUDIT" in out.splitlines()[0] and " audit " in out.splitlines()[1]
        code, out, _ = await _cli(["endpoint", "config", str(ep["id"]), "-o", "json", *s], capsys)
        assert code == 0 and json.loads(out)["audited"] is True
        code, out, _ = await _cli(["endpoint", "config", str(ep["id"]), "policy-audit-mode=false", "-o", "json", *s], capsys)
        assert code == 0 and json.loads(out)["audited"] is False
        code, _, err = await _cli(["endpoint", "config", str(ep["id"]), "policy-audit-mode=perhaps", *s], capsys)
        assert code == 2 and "true, false or default" in err
    finally:
        await agent.stop()


def test_endpoint_settings_parse() -> None:
    assert endpoint_settings(["policy-audit-mode=true"]) == {"policy_audit_mode": True}
    assert endpoint_settings(["PolicyAuditMode=Disabled"]) == {"policy_audit_mode": False}
    assert endpoint_settings(["policy-audit-mode=default"]) == {"policy_audit_mode": None}
    with pytest.raises(ValueError, match="unknown setting 'color'"):
        endpoint_settings(["color=red"])


async def test_audit_flows_are_shown_and_counted(rig: Rig, short_dir: Path) -> None:
    sock = short_dir / "agent.sock"
    agent = await _start(rig, sock)
    try:
        sub = agent.flows.subscribe(flt=FlowFilter.parse(verdicts=["audit"]))
        await rig.datapath.events.put({"type": "forward", "verdict": "forward", "reason": "policy-allow", "src_ip": "10.200.0.6", "dst_ip": "10.200.0.5"})
        await rig.datapath.events.put({"type": "audit", "verdict": "audit", "reason": "no-policy-match", "direction": "ingress", "src_ip": "10.200.0.6", "dst_ip": "10.200.0.5"})
        await rig.proxy.log.put({"type": "l7", "verdict": "audit", "method": "PUT", "path": "/v1/exhaust-port", "status": 200, "src_ip": "10.200.0.6", "dst_ip": "10.200.0.5"})
        got = [await asyncio.wait_for(sub.queue.get(), 5) for _ in range(2)]
        assert sorted((e.type, e.verdict) for e in got) == [("audit", "audit"), ("l7", "audit")]
        rig.datapath.count("audit", "no-policy-match", "ingress", 3)
        text = (await agent.scrape()).decode()
        assert 'ciliate_policy_audit_count_total{direction="ingress",reason="no-policy-match"} 3.0' in text
        assert 'ciliate_policy_l7_total{proxy_type="http",rule="audited"} 1.0' in text
        assert 'ciliate_forward_count_total{direction="ingress",reason="no-policy-match"}' not in text
    finally:
        await agent.stop()
