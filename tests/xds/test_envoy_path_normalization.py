"""policy/http_path.py states Envoy's path normalization; the real Envoy, as
configured by xds/listener.py, must agree on every path here: the upstream
receives exactly normalize_path(sent), and Envoy answers 400 exactly where
normalize_path refuses. Raw requests (nothing between us and Envoy
rewrites the path), over HTTP/1.1 and HTTP/2 (h2c prior knowledge)."""

from __future__ import annotations

import asyncio

import h2.connection
import h2.events
import pytest

from policy.http_path import PathRejected, normalize_path
from tests.xds.conftest import free_port
from tests.xds.fixtures import CLIENT_IDENTITY, rule, state

pytestmark = pytest.mark.envoy

PATHS = [
    "/public/x", "/public/../private", "/public/%2e%2e/private", "/public/%2E%2E/private", "/public/.%2e/private",
    "/public/..%2fprivate", "/public/..%2Fprivate", "/public/..%5cprivate", "/public//../private", "/public/./../private",
    "/public/..\\private", "/public/a\\b", "//public///x", "/public/x/..", "/public/x/.", "/..", "/public/x/%2e",
    "/public/x/%2E%2e/", "/public/a/b/../../..", "/public/a%41b", "/public/%7euser", "/public/a%2Eb", "/public/a%2db",
    "/public/a%20b", "/public/a%2a%2A", "/public/a%3Fb", "/public/%252e%252e/x", "/public/%zz", "/public/a%2x", "/public/a%",
    "/public/a|b", "/public/a{b}", '/public/a"b', "/public/a<b>", "/public/a^b", "/public/a`b", "/public/.../x",
    "/public/a?x=/../y", "/public/a%00b", "/public/x/..;/y", "/public/..;/private", "/public/x/.;/y", "/public/x;/../y",
]


async def _h1(port: int, path: str, headers: dict[str, str]) -> tuple[int, str]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    w.write(b"GET " + path.encode() + f" HTTP/1.1\r\nHost: x\r\n{head}Connection: close\r\n\r\n".encode())
    await w.drain()
    data = await r.read()
    w.close()
    status_line, _, rest = data.decode(errors="replace").partition("\r\n")
    return int(status_line.split()[1]), rest.partition("\r\n\r\n")[2]


async def _h2(port: int, path: str, headers: dict[str, str]) -> tuple[int, str]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    conn = h2.connection.H2Connection()
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", path), *headers.items()], end_stream=True)
    w.write(conn.data_to_send())
    status, body = 0, b""
    try:
        while True:
            data = await asyncio.wait_for(r.read(65536), 5)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    conn.acknowledge_received_data(len(ev.data), ev.stream_id)
                elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                    return status or 400, body.decode(errors="replace")
            w.write(conn.data_to_send())
    finally:
        w.close()
    return status or 400, body.decode(errors="replace")


@pytest.mark.parametrize("send", [pytest.param(_h1, id="http1"), pytest.param(_h2, id="http2")])
async def test_envoy_forwards_exactly_the_normalized_path(envoy_rig, send):
    rig = await envoy_rig()
    port = free_port()
    await rig.publish(state({port: (rule([CLIENT_IDENTITY], method="GET"),)}))
    await rig.envoy.wait_ready()
    disagree = []
    for path in PATHS:
        try:
            want = (200, f"upstream GET {normalize_path(path)}")
        except PathRejected:
            want = (400, None)
        status, body = await send(port, path, rig.upstream_header)
        got = (status, body if status == 200 else None)
        if got != want:
            disagree.append(f"{path!r}: envoy {got}, normalize_path {want}")
    assert not disagree, "\n".join(disagree)


async def test_path_rules_judge_the_normalized_path(envoy_rig):
    rig = await envoy_rig()
    port = free_port()
    await rig.publish(state({port: (rule([CLIENT_IDENTITY], method="GET", path="/public/.*"),)}))
    await rig.envoy.wait_ready()
    got = {p: (await _h1(port, p, rig.upstream_header))[0] for p in
           ["/public/x", "/public/../private", "/public/%2e%2e/private", "/public/..%2fprivate", "/public//../private", "/public/./../private"]}
    assert got == {"/public/x": 200, "/public/../private": 403, "/public/%2e%2e/private": 403,
                   "/public/..%2fprivate": 400, "/public//../private": 200, "/public/./../private": 403}
