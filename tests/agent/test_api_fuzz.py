"""Property: no request to any route in the app's own /openapi.json gets a 5xx.

Hypothesis draws a route, then random path parameters (arbitrary text sent
percent-encoded as UTF-8, raw percent-encoded bytes, odd digits), random
query values and random request bodies (JSON of any shape, near-valid
endpoint bodies with one field garbled, bytes that are not JSON, nesting
thousands deep), and sends them through aiohttp's test client to the app
built over the test agent. Every answer must be below 500, and every 4xx a
JSON object with an `error` string. The streaming /v1/flows route is left
out: it answers 200 and then streams until the client leaves.
Examples: API_FUZZ_EXAMPLES (default 1000, about 5 s; 5000 take about 25 s).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.agent.api_client import api_client, raw
from tests.agent.conftest import Rig

EXAMPLES = int(os.environ.get("API_FUZZ_EXAMPLES", "1000"))
SKIP = {"/v1/flows"}
TIMEOUT = 20.0  # per request: a hang is a failure too

_ODD_DIGITS = ["²", "①", "١", "١٢", "１", "𝟏", "٣", "0", "1", "65535", "4096", "1" * 30, "-1", "1.0", "1e3", " 1", "1\n"]
path_value = st.one_of(
    st.text(max_size=40).map(lambda s: quote(s, safe="")),
    st.sampled_from(_ODD_DIGITS).map(lambda s: quote(s, safe="")),
    st.binary(max_size=12).map(lambda b: "".join(f"%{x:02X}" for x in b)),
    st.integers(min_value=-5, max_value=10**12).map(str),
)
query_value = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["inf", "-inf", "nan", "-1", "0", "0.01", "1e999", "1e-999", "١", "1_0", "", "0x1", ".5", "5."]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
_FIELDS = ("container_id", "ifname", "host_ifname", "netns", "ipv4", "labels", "name")


@st.composite
def near_valid_endpoint(draw) -> bytes:
    n = draw(st.integers(0, 250))
    body: dict = {
        "container_id": f"c{draw(st.integers(0, 10_000))}",
        "host_ifname": f"lxc{draw(st.integers(0, 10_000))}",
        "ipv4": f"10.201.{n}.{draw(st.integers(1, 254))}",
        "labels": {"app": "a"},
    }
    field = draw(st.sampled_from(_FIELDS + ("labels.key", "labels.value", "extra")))
    garbage = draw(json_value)
    if field == "labels.key":
        body["labels"] = {draw(st.text(max_size=300)): "v"}
    elif field == "labels.value":
        body["labels"] = {"app": draw(st.one_of(st.text(max_size=300), json_value))}
    elif field == "extra":
        body[draw(st.text(max_size=10))] = garbage
    else:
        body[field] = draw(st.one_of(st.just(garbage), st.text(max_size=40)))
    return json.dumps(body).encode()


request_body = st.one_of(
    near_valid_endpoint(),
    json_value.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
    st.integers(1, 6000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 6000).map(lambda n: b'{"a":' * n + b"0" + b"}" * n),
    st.sampled_from([b"", b"null", b"NaN", b"\xff\xfe", b'"\\ud800"', b'{"labels": {"\\ud800": "x"}}', b"1" * 5000]),
)
content_type = st.sampled_from(["application/json", "application/json; charset=utf-16", "application/json; charset=nope", "text/plain", None])


def test_no_route_answers_5xx(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    rig = Rig(tmp_path)
    loop = asyncio.new_event_loop()
    ctx = api_client(rig)
    try:
        _, client = loop.run_until_complete(ctx.__aenter__())
        doc = loop.run_until_complete(_get_json(client, "/openapi.json"))
        routes = sorted((path, method.upper(), op) for path, ops in doc["paths"].items() for method, op in ops.items() if path not in SKIP)
        assert len(routes) >= 9, routes
        hit: set[tuple[str, str]] = set()

        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(route=st.sampled_from(routes), data=st.data())
        def one_request(route, data) -> None:
            path, method, op = route
            params = op.get("parameters", [])
            url = path
            for p in params:
                if p["in"] == "path":
                    url = url.replace("{" + p["name"] + "}", data.draw(path_value, label=p["name"]) or "x")
            query = [(p["name"], data.draw(query_value, label=p["name"])) for p in params if p["in"] == "query" and data.draw(st.booleans())]
            if query:
                url += "?" + "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in query)
            kw: dict = {}
            if "requestBody" in op or data.draw(st.booleans()):
                kw["data"] = data.draw(request_body, label="body")
                ctype = data.draw(content_type, label="content-type")
                if ctype:
                    kw["headers"] = {"Content-Type": ctype}
            status, ctype_got, text = loop.run_until_complete(asyncio.wait_for(_send(client, method, url, kw), TIMEOUT))
            hit.add((path, method))
            assert status < 500, f"{method} {url} -> {status}: {text[:500]}"
            if status >= 400:
                assert ctype_got == "application/json", f"{method} {url} -> {status} {ctype_got}: {text[:300]}"
                body = json.loads(text)
                assert isinstance(body, dict) and isinstance(body.get("error"), str), text[:300]

        one_request()
        assert hit == {(p, m) for p, m, _ in routes}, "every route was exercised"
    finally:
        loop.run_until_complete(ctx.__aexit__(None, None, None))
        loop.close()


async def _get_json(client, path: str) -> dict:
    resp = await client.get(path)
    assert resp.status == 200
    return await resp.json()


async def _send(client, method: str, url: str, kw: dict) -> tuple[int, str, str]:
    resp = await raw(client, method, url, **kw)
    return resp.status, resp.content_type, await resp.text(errors="replace")


def test_openapi_paths_are_the_fuzzed_ones() -> None:
    # The fuzz test substitutes {name} placeholders: keep the document's path syntax plain.
    from agent.api.server import ROUTES

    assert all(re.fullmatch(r"[/a-z0-9.{}_]+", r.path) for r in ROUTES)
