"""Bad input to the REST API is a 4xx with a JSON ErrorBody, never a 500 and never a wrong match."""

from __future__ import annotations

import pytest

from agent.api.server import ROUTES, WAIT_MAX
from agent.api.openapi import openapi_document
from tests.agent.api_client import api_client, raw
from tests.agent.conftest import Rig

BODY = {"container_id": "c1", "host_ifname": "lxc1", "ipv4": "10.200.0.5", "labels": {"app": "a"}}


async def _error_json(resp, status: int | tuple[int, ...]) -> dict:
    statuses = (status,) if isinstance(status, int) else status
    assert resp.status in statuses, (resp.status, await resp.text())
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert isinstance(body.get("error"), str) and body["error"]
    return body


_ODD_IDS = (
    "%C2%B2",  # superscript two: isdigit() but not int()
    "%E2%91%A0",  # circled one
    "%D9%A1",  # Arabic-Indic one: int() says 1
    "%EF%BC%91",  # fullwidth one
    "1%00",
    "%FF",
    "-1",
    "+1",
    "%201",
    "1_0",
)
_ODD_REQUESTS = [(m, f"/v1/endpoints/{i}") for i in _ODD_IDS for m in ("GET", "DELETE")] + [("GET", f"/v1/bpf/policy/{i}") for i in _ODD_IDS]


@pytest.mark.parametrize("method, path", _ODD_REQUESTS)
async def test_non_ascii_digit_ids_are_4xx_and_never_match(rig: Rig, method: str, path: str) -> None:
    async with api_client(rig) as (agent, c):
        created = await c.post("/v1/endpoints", params={"wait": "5"}, json=BODY)
        assert (await created.json())["id"] == 1
        await _error_json(await raw(c, method, path), (400, 404))
        assert agent.table.view(1) is not None  # the DELETE of "١" did not remove endpoint 1


async def test_a_huge_id_is_a_404(rig: Rig) -> None:
    async with api_client(rig) as (_, c):
        await _error_json(await raw(c, "GET", "/v1/endpoints/" + "1" * 5000), 404)
        await _error_json(await raw(c, "GET", "/v1/endpoints/00000000001"), 404)
        await _error_json(await raw(c, "GET", "/v1/endpoints/1"), 404)  # well-formed, unknown


async def test_deeply_nested_or_huge_number_json_body_is_a_400(rig: Rig) -> None:
    async with api_client(rig) as (_, c):
        for body in (b"[" * 5000 + b"]" * 5000, b'{"a":' * 5000 + b"1" + b"}" * 5000, b"1" * 5000):
            resp = await c.post("/v1/endpoints", data=body, headers={"Content-Type": "application/json"})
            assert "not JSON" in (await _error_json(resp, 400))["error"]


async def test_bogus_charset_and_oversized_body_are_json_4xx(rig: Rig) -> None:
    async with api_client(rig) as (_, c):
        resp = await c.post("/v1/endpoints", data=b"{}", headers={"Content-Type": "application/json; charset=nope"})
        await _error_json(resp, 400)
        resp = await c.post("/v1/endpoints", data=b" " * (3 * 1024 * 1024), headers={"Content-Type": "application/json"})
        await _error_json(resp, 413)


async def test_unknown_route_and_method_are_json(rig: Rig) -> None:
    async with api_client(rig) as (_, c):
        await _error_json(await raw(c, "GET", "/v1/endpoints/1/extra"), 404)
        resp = await raw(c, "PUT", "/v1/endpoints/1")
        await _error_json(resp, 405)
        assert "GET" in resp.headers.get("Allow", "")


async def test_duplicate_ipv4_of_another_endpoint_is_a_400(rig: Rig) -> None:
    async with api_client(rig) as (agent, c):
        first = await c.post("/v1/endpoints", json=BODY)
        assert first.status == 201
        other = {**BODY, "container_id": "c2", "host_ifname": "lxc2"}
        body = await _error_json(await c.post("/v1/endpoints", json=other), 400)
        assert "ipv4" in body["detail"] and "10.200.0.5" in body["detail"] and "endpoint 1" in body["detail"]
        assert len(agent.table) == 1
        # The same endpoint (CNI retries ADD, or updates its labels) keeps its own address.
        again = await c.post("/v1/endpoints", json={**BODY, "labels": {"app": "b"}})
        assert again.status == 200 and (await again.json())["labels"] == {"app": "b"}


@pytest.mark.parametrize(
    "name",
    ["../x", "a/b", "lxc\x00", "lxc 1", "lxc\t1", "lxc\n", "", ".", "..", "x" * 16, "lxc:1", "lxcé", "ü" * 8],
)
async def test_bad_host_ifname_is_a_400_naming_the_field(rig: Rig, name: str) -> None:
    async with api_client(rig) as (agent, c):
        body = await _error_json(await c.post("/v1/endpoints", json={**BODY, "host_ifname": name}), 400)
        assert body["error"] == "invalid endpoint" and "host_ifname" in body["detail"]
        assert len(agent.table) == 0


async def test_longest_valid_ifname_is_accepted(rig: Rig) -> None:
    async with api_client(rig) as (_, c):
        resp = await c.post("/v1/endpoints", json={**BODY, "host_ifname": "lxc" + "a" * 12})
        assert resp.status == 201


@pytest.mark.parametrize("wait", ["inf", "-inf", "nan", "NaN", "-1", "1e", "abc", "%D9%A1", "1_0", "%201", "0x10"])
async def test_wait_must_be_finite_and_non_negative(rig: Rig, wait: str) -> None:
    async with api_client(rig) as (agent, c):
        body = await _error_json(await raw(c, "POST", f"/v1/endpoints?wait={wait}", json=BODY), 400)
        assert "wait" in body["detail"]
        assert len(agent.table) == 0


async def test_wait_is_capped_and_the_cap_is_documented(rig: Rig) -> None:
    async with api_client(rig) as (_, c):
        for wait in ("0", "0.5", "5", "1e999", "99999999"):
            resp = await c.post("/v1/endpoints", params={"wait": wait}, json=BODY)
            assert resp.status in (200, 201), await resp.text()
    doc = openapi_document(ROUTES)
    (wait_param,) = doc["paths"]["/v1/endpoints"]["post"]["parameters"]
    assert f"at most {WAIT_MAX:.0f}" in wait_param["description"]


@pytest.mark.parametrize(
    "labels, key",
    [
        ({"app": "x" * 100_000}, "labels.app"),
        ({"app": "-bad"}, "labels.app"),
        ({"app": "has space"}, "labels.app"),
        ({"x" * 64: "v"}, "labels.xxxx"),
        ({"Bad_Prefix.io/app": "v"}, "labels.Bad_Prefix.io/app"),
        ({"a" * 254 + "/app": "v"}, "labels.aaaa"),
        ({"k8s:app!": "v"}, "labels.k8s:app!"),
        ({"": "v"}, "labels."),
    ],
)
async def test_labels_follow_kubernetes_syntax(rig: Rig, labels: dict, key: str) -> None:
    async with api_client(rig) as (agent, c):
        body = await _error_json(await c.post("/v1/endpoints", json={**BODY, "labels": labels}), 400)
        assert body["error"] == "invalid endpoint" and key in body["detail"], body
        assert len(body["detail"]) < 1000  # a 100k value is not echoed back
        assert len(agent.table) == 0


async def test_cilium_and_kubernetes_label_keys_are_accepted(rig: Rig) -> None:
    labels = {
        "k8s:io.kubernetes.pod.namespace": "default",
        "io.cilium.k8s.policy.name": "x",
        "app.kubernetes.io/name": "web",
        "any:tier": "",
        "k8s:class": "deathstar",
        "a" * 63: "v" * 63,
    }
    async with api_client(rig) as (_, c):
        resp = await c.post("/v1/endpoints", json={**BODY, "labels": labels})
        assert resp.status == 201, await resp.text()
