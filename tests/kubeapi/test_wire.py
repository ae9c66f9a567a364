"""The wire format itself, read raw with httpx, and kubesim run on the test's
own event loop (as an asyncio agent test would run it)."""

from __future__ import annotations

import json

import httpx

from demo.kubesim import KubeAPIServer

CNP_PATH = "/apis/cilium.io/v2/namespaces/default/ciliumnetworkpolicies"


def _policy(name: str) -> dict:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name}, "spec": {"endpointSelector": {}}}


async def test_watch_is_chunked_json_lines_and_410_is_an_error_event():
    server = KubeAPIServer(bookmark_interval=60)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            created = (await http.post(CNP_PATH, json=_policy("a"))).json()
            rv = created["metadata"]["resourceVersion"]
            async with http.stream("GET", CNP_PATH, params={"watch": "true", "resourceVersion": "0",
                                                            "timeoutSeconds": "1"}) as resp:
                assert resp.headers["transfer-encoding"] == "chunked"
                lines = [json.loads(line) async for line in resp.aiter_lines() if line]
            assert [(e["type"], e["object"]["metadata"]["name"]) for e in lines] == [("ADDED", "a")]

            await http.post(CNP_PATH, json=_policy("b"))
            server.compact()
            async with http.stream("GET", CNP_PATH, params={"watch": "1", "resourceVersion": rv}) as resp:
                assert resp.status_code == 200  # the error travels inside the stream, as on a real server
                [event] = [json.loads(line) async for line in resp.aiter_lines() if line]
            assert event["type"] == "ERROR"
            status = event["object"]
            assert (status["kind"], status["status"], status["code"], status["reason"]) == (
                "Status", "Failure", 410, "Expired")

            discovery = (await http.get("/apis/cilium.io/v2")).json()
            cnp = next(r for r in discovery["resources"] if r["name"] == "ciliumnetworkpolicies")
            assert cnp["namespaced"] and cnp["kind"] == "CiliumNetworkPolicy"
            assert set(cnp["shortNames"]) == {"cnp", "ciliumnp"} and "watch" in cnp["verbs"]
            assert any(r["name"] == "ciliumnetworkpolicies/status" for r in discovery["resources"])
            ccnp = next(r for r in discovery["resources"] if r["name"] == "ciliumclusterwidenetworkpolicies")
            assert not ccnp["namespaced"] and ccnp["shortNames"] == ["ccnp"]
    finally:
        await server.stop()


async def test_stop_with_an_open_watch_leaves_nothing_running():
    server = KubeAPIServer()
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            async with http.stream("GET", CNP_PATH, params={"watch": "1"}) as resp:
                assert resp.status_code == 200
                assert server.open_watches == 1
                await server.stop()
                try:
                    async for _ in resp.aiter_lines():
                        pass
                    ended = "cleanly"
                except httpx.HTTPError:
                    ended = "cut"
            assert ended == "cut" and server.open_watches == 0
    finally:
        await server.stop()
