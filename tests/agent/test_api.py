"""The REST API on its unix socket, and the CLI against it (`-o json` on every command)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from agent.cli import ciliate as cli
from agent.api.server import ROUTES
from agent.core.agent import Agent
from agent.core.models import Endpoint, EndpointList, IdentityList, PolicyList, Status
from agent.api.openapi import openapi_document
from tests.agent.conftest import Rig

L4 = {"name": "l4", "selector": {"class": "deathstar"}, "allowFrom": {"org": "empire"}, "port": 80}


@pytest.fixture
async def served(rig: Rig) -> AsyncIterator[tuple[Agent, Path]]:
    short = Path(tempfile.mkdtemp(prefix="cil-api-"))  # unix socket paths are limited to 107 bytes
    sock = short / "agent.sock"
    agent = rig.agent(socket_path=sock, metrics_port=0)
    await agent.start()
    try:
        yield agent, sock
    finally:
        await agent.stop()
        shutil.rmtree(short, ignore_errors=True)


def client(sock: Path) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(sock)), base_url="http://agent")


BODY = {"container_id": "c1", "host_ifname": "lxc1", "ipv4": "10.200.0.5", "labels": {"class": "deathstar", "org": "empire"}}


async def test_socket_is_private(served) -> None:
    _, sock = served
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600


async def test_endpoint_lifecycle(served) -> None:
    agent, sock = served
    async with client(sock) as c:
        r = await c.post("/v1/endpoints", params={"wait": "5"}, json=BODY)
        assert r.status_code == 201
        ep = Endpoint.model_validate_json(r.content)
        assert ep.state == "ready" and ep.identity is not None
        again = await c.post("/v1/endpoints", json=BODY)  # CNI retries ADD: same endpoint back
        assert again.status_code == 200 and again.json()["id"] == ep.id
        listed = EndpointList.model_validate_json((await c.get("/v1/endpoints", params={"container_id": "c1"})).content)
        assert [e.id for e in listed.endpoints] == [ep.id]
        assert (await c.get("/v1/endpoints", params={"container_id": "other"})).json() == {"endpoints": []}
        assert (await c.get(f"/v1/endpoints/{ep.id}")).json()["ipv4"] == "10.200.0.5"
        assert (await c.delete(f"/v1/endpoints/{ep.id}")).status_code == 200
        gone = await c.get(f"/v1/endpoints/{ep.id}")
        assert gone.status_code == 404 and gone.json()["error"] == "no such endpoint"
        assert (await c.delete(f"/v1/endpoints/{ep.id}")).status_code == 404


@pytest.mark.parametrize(
    "body, where",
    [
        pytest.param({**BODY, "ipv4": "10.0.0.300"}, "ipv4", id="bad-ip"),
        pytest.param({k: v for k, v in BODY.items() if k != "host_ifname"}, "host_ifname", id="missing-field"),
        pytest.param({**BODY, "host_ifname": "x" * 16}, "host_ifname", id="ifname-too-long"),
        pytest.param({**BODY, "labels": {"a=b": "c"}}, "labels", id="bad-label-key"),
        pytest.param({**BODY, "surprise": 1}, "surprise", id="unknown-field"),
    ],
)
async def test_bad_endpoint_body_names_the_field(served, body: dict, where: str) -> None:
    _, sock = served
    async with client(sock) as c:
        r = await c.post("/v1/endpoints", json=body)
    assert r.status_code == 400 and r.json()["error"] == "invalid endpoint" and where in r.json()["detail"]


async def test_not_json_is_a_400(served) -> None:
    _, sock = served
    async with client(sock) as c:
        r = await c.post("/v1/endpoints", content=b"{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.json()["error"]


async def test_policies_identities_bpf_and_status(served, rig: Rig) -> None:
    agent, sock = served
    async with client(sock) as c:
        ep = (await c.post("/v1/endpoints", params={"wait": "5"}, json=BODY)).json()
        await c.post("/v1/endpoints", params={"wait": "5"}, json={**BODY, "container_id": "c2", "host_ifname": "lxc2", "ipv4": "10.200.0.6", "labels": {"org": "empire", "class": "tiefighter"}})
        rig.write_policy("l4.json", [L4])
        await agent.watcher.poll_once()
        await agent.queue.drain(5)
        pols = PolicyList.model_validate_json((await c.get("/v1/policies")).content)
        assert [(p.name, p.state, p.endpoints) for p in pols.policies] == [("default/l4", "enforced", 1)]
        one = await c.get("/v1/policies/default/l4")
        assert one.status_code == 200 and one.json()["name"] == "default/l4"
        assert (await c.get("/v1/policies/default/nope")).status_code == 404
        ids = IdentityList.model_validate_json((await c.get("/v1/identities")).content)
        assert {1, 2}.issubset({i.id for i in ids.identities})
        assert any(ep["id"] in i.endpoints for i in ids.identities)
        dump = (await c.get(f"/v1/bpf/policy/{ep['id']}")).json()
        # Both empire endpoints (the deathstar itself and the tiefighter) may reach port 80.
        assert [(e["direction"], e["ports"], e["verdict"]) for e in dump["entries"]] == [("ingress", "80", "allow")] * 2
        assert any("k8s:class=tiefighter" in e["labels"] for e in dump["entries"])
        st = Status.model_validate_json((await c.get("/v1/status")).content)
        assert st.endpoints == {"ready": 2} and st.policies == {"enforced": 1} and st.revision >= 1
        health = await c.get("/v1/healthz")
        assert health.status_code == 200 and health.json()["ok"] is True


async def test_metrics_on_loopback(served) -> None:
    agent, sock = served
    async with client(sock) as c:
        await c.post("/v1/endpoints", params={"wait": "5"}, json=BODY)
    port = agent.services[0].metrics_port
    async with httpx.AsyncClient() as h:
        text = (await h.get(f"http://127.0.0.1:{port}/metrics")).text
    assert 'ciliate_endpoint_state{endpoint_state="ready"} 1.0' in text
    assert "ciliate_endpoint_regeneration_time_stats_seconds_count" in text


async def test_flow_stream_filters_by_type(served, rig: Rig) -> None:
    agent, sock = served
    async with client(sock) as c:
        async with c.stream("GET", "/v1/flows", params={"type": "l7"}) as resp:
            assert resp.headers["content-type"].startswith("application/x-ndjson")
            while agent.flows.subscribers == 0:
                await asyncio.sleep(0.01)
            rig.datapath.events.put_nowait({"type": "drop", "dst_port": 80})
            rig.proxy.log.put_nowait({"type": "l7", "method": "PUT", "path": "/v1/exhaust-port", "status": 403, "verdict": "denied"})
            lines = resp.aiter_lines()
            first = json.loads(await asyncio.wait_for(lines.__anext__(), 5))
    assert (first["type"], first["method"], first["status"]) == ("l7", "PUT", 403)


def test_openapi_document_is_consistent() -> None:
    doc = openapi_document(ROUTES)
    assert doc["openapi"].startswith("3.")
    schemas = doc["components"]["schemas"]

    def refs(node):
        if isinstance(node, dict):
            if "$ref" in node:
                yield node["$ref"]
            for v in node.values():
                yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    dangling = [r for r in refs(doc) if r.removeprefix("#/components/schemas/") not in schemas]
    assert dangling == []
    ops = [op for path in doc["paths"].values() for op in path.values()]
    assert len({op["operationId"] for op in ops}) == len(ops) == len(ROUTES)
    for path, item in doc["paths"].items():
        for op in item.values():
            declared = {p["name"] for p in op.get("parameters", ()) if p["in"] == "path"}
            assert declared == set(part[1:-1] for part in path.split("/") if part.startswith("{")), path
            assert op["responses"], path
    # Models are referenced, not inlined: the endpoint schema names its enum.
    assert "EndpointState" in schemas and "labels" in schemas["EndpointCreate"]["properties"]


async def test_openapi_is_served(served) -> None:
    _, sock = served
    async with client(sock) as c:
        doc = (await c.get("/openapi.json")).json()
    assert doc == json.loads(json.dumps(openapi_document(ROUTES)))


async def test_second_agent_refuses_a_live_socket(served, rig: Rig) -> None:
    _, sock = served
    other = rig.agent(socket_path=sock, state_dir=rig.tmp / "other")
    with pytest.raises(RuntimeError, match="already listening"):
        await other.start()
    await other.stop()


# --- CLI against the live API ------------------------------------------------------

async def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = await asyncio.to_thread(cli.main, argv)
    out, err = capsys.readouterr()
    return code, out, err


async def test_cli_json_output(served, rig: Rig, capsys) -> None:
    agent, sock = served
    s = ["--socket", str(sock), "-o", "json"]
    async with client(sock) as c:
        ep = (await c.post("/v1/endpoints", params={"wait": "5"}, json=BODY)).json()
    rig.write_policy("l4.json", [L4])
    await agent.watcher.poll_once()
    await agent.queue.drain(5)

    code, out, _ = await run_cli(["endpoint", "list", *s], capsys)
    assert code == 0 and [e["id"] for e in json.loads(out)["endpoints"]] == [ep["id"]]
    code, out, _ = await run_cli(["endpoint", "get", str(ep["id"]), *s], capsys)
    assert code == 0 and json.loads(out)["state"] == "ready"
    code, out, _ = await run_cli(["identity", "list", *s], capsys)
    assert code == 0 and any(ep["id"] in i["endpoints"] for i in json.loads(out)["identities"])
    code, out, _ = await run_cli(["policy", "get", *s], capsys)
    assert code == 0 and json.loads(out)["policies"][0]["state"] == "enforced"
    code, out, _ = await run_cli(["policy", "get", "default/l4", *s], capsys)
    assert code == 0 and json.loads(out)["endpoints"] == 1
    code, out, _ = await run_cli(["bpf", "policy", "get", str(ep["id"]), *s], capsys)
    assert code == 0 and json.loads(out)["endpoint_id"] == ep["id"]
    code, out, _ = await run_cli(["status", *s], capsys)
    assert code == 0 and json.loads(out)["endpoints"] == {"ready": 1}


async def test_cli_tables_and_errors(served, capsys) -> None:
    _, sock = served
    async with client(sock) as c:
        await c.post("/v1/endpoints", params={"wait": "5"}, json=BODY)
    code, out, _ = await run_cli(["endpoint", "list", "--socket", str(sock)], capsys)
    assert code == 0 and out.splitlines()[0].split()[:3] == ["ID", "NAME", "IPV4"] and "10.200.0.5" in out
    code, _, err = await run_cli(["endpoint", "get", "999", "--socket", str(sock)], capsys)
    assert code == 1 and "no such endpoint" in err
    code, _, err = await run_cli(["status", "--socket", str(sock.with_name("none.sock"))], capsys)
    assert code == 1 and "is `ciliate agent` running?" in err


async def test_cli_monitor_json_lines(served, rig: Rig, capsys) -> None:
    agent, sock = served

    async def feed() -> None:
        while agent.flows.subscribers == 0:
            await asyncio.sleep(0.01)
        rig.datapath.events.put_nowait({"type": "forward", "dst_port": 1})
        rig.datapath.events.put_nowait({"type": "drop", "dst_port": 80, "reason": "policy denied"})

    feeder = asyncio.create_task(feed())
    code, out, err = await run_cli(["monitor", "--type", "drop", "-n", "1", "-o", "json", "--socket", str(sock)], capsys)
    await feeder
    (line,) = out.splitlines()
    assert code == 0 and json.loads(line)["type"] == "drop" and json.loads(line)["reason"] == "policy denied"
    # Said once subscribed, on stderr so stdout stays JSON: scripts wait for it.
    assert err.splitlines() == ["Listening for flow events. Press Ctrl-C to quit."]


async def test_the_flow_stream_is_subscribed_before_its_headers_are_sent(served, rig: Rig) -> None:
    """A client that has the 200 misses no event from then on."""
    agent, sock = served
    transport = httpx.AsyncHTTPTransport(uds=str(sock))
    async with httpx.AsyncClient(transport=transport, base_url="http://agent", timeout=30) as c:
        async with c.stream("GET", "/v1/flows") as resp:
            assert resp.status_code == 200 and agent.flows.subscribers == 1
            rig.datapath.events.put_nowait({"type": "drop", "dst_port": 80, "reason": "policy denied"})
            first = await anext(resp.aiter_lines())
    assert json.loads(first)["dst_port"] == 80
