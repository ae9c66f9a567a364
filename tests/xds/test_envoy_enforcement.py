"""Policy enforced by the real Envoy, configured only through our xDS server.

These tests render with RenderParams.test_only_loopback(): listeners bind
127.0.0.1 without `transparent`, and the ORIGINAL_DST cluster takes the
upstream from the x-envoy-original-dst-host request header instead of the
accepted socket's local address (which the kernel's TPROXY redirect provides
in production and is tested end to end at integration). Everything else, the
RBAC rules, the 403 body, RDS updates, is what production renders.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from policy.compiled import IDENTITY_ANY
from tests.xds.conftest import free_port
from tests.xds.fixtures import CLIENT_IDENTITY, OTHER_IDENTITY, rule, state

pytestmark = pytest.mark.envoy

POLICY = (
    rule([CLIENT_IDENTITY], method="GET", path="/public(/.*)?"),
    rule([CLIENT_IDENTITY], method="POST|PUT", path="/api/v[0-9]+/items"),
    rule([CLIENT_IDENTITY], host="shop\\.example(:[0-9]+)?", path="/cart"),
    rule([CLIENT_IDENTITY], path="/admin", headers=(("x-token", "s3cret"),)),
    rule([CLIENT_IDENTITY], path="/debug", headers=(("x-debug", None),)),
    rule([OTHER_IDENTITY], path="/other-only"),
    rule([IDENTITY_ANY], path="/anyone"),
    # Same peers and fields but the path: merged into one alternation by the renderer.
    rule([CLIENT_IDENTITY], method="GET", path="/m1"),
    rule([CLIENT_IDENTITY], method="GET", path="/m2/[a-z]+"),
    rule([CLIENT_IDENTITY], method="GET", path="/t/1(/.*)?"),
    rule([CLIENT_IDENTITY], method="GET", path="/t/2(/.*)?"),
)

CASES = [
    pytest.param("GET", "/public", {}, 200, id="method+path-allowed"),
    pytest.param("GET", "/public/a/b", {}, 200, id="path-regex-allowed"),
    pytest.param("GET", "/publicity", {}, 403, id="path-must-match-whole"),
    pytest.param("DELETE", "/public", {}, 403, id="method-denied"),
    pytest.param("PUT", "/api/v2/items", {}, 200, id="method-alternation-allowed"),
    pytest.param("POST", "/api/vX/items", {}, 403, id="path-regex-denied"),
    pytest.param("GET", "/cart", {"host": "shop.example"}, 200, id="host-allowed"),
    pytest.param("GET", "/cart", {"host": "evil.example"}, 403, id="host-denied"),
    pytest.param("GET", "/admin", {"x-token": "s3cret"}, 200, id="header-exact-allowed"),
    pytest.param("GET", "/admin", {"x-token": "wrong"}, 403, id="header-exact-wrong-value"),
    pytest.param("GET", "/admin", {}, 403, id="header-exact-missing"),
    pytest.param("GET", "/debug", {"x-debug": ""}, 200, id="header-presence-allowed"),
    pytest.param("GET", "/debug", {}, 403, id="header-presence-missing"),
    pytest.param("GET", "/other-only", {}, 403, id="peer-identity-not-allowed"),
    pytest.param("GET", "/anyone", {}, 200, id="any-identity-allowed"),
    pytest.param("GET", "/nothing", {}, 403, id="no-rule-matches"),
    pytest.param("GET", "/m1", {}, 200, id="merged-paths-first"),
    pytest.param("GET", "/m2/abc", {}, 200, id="merged-paths-second"),
    pytest.param("GET", "/m1/abc", {}, 403, id="merged-paths-still-match-whole"),
    pytest.param("POST", "/m1", {}, 403, id="merged-paths-keep-method"),
    pytest.param("GET", "/t/2/deep/er", {}, 200, id="merged-shared-tail"),
    pytest.param("GET", "/t/1", {}, 200, id="merged-shared-tail-optional"),
    pytest.param("GET", "/t/3/x", {}, 403, id="merged-shared-tail-other-prefix"),
]


@pytest.mark.parametrize("delta", [pytest.param(False, id="sotw"), pytest.param(True, id="delta")])
async def test_requests_get_the_policy_verdict(envoy_rig, delta):
    rig = await envoy_rig(delta=delta)
    port = free_port()
    await rig.publish(state({port: POLICY}))
    await rig.envoy.wait_ready()
    failures = []
    async with httpx.AsyncClient() as client:
        for case in CASES:
            method, path, headers, want = case.values
            r = await rig.get(client, port, path, method=method, headers=headers)
            if r.status_code != want:
                failures.append(f"{case.id}: {method} {path} -> {r.status_code} (want {want})")
            elif want == 200 and r.text != f"upstream {method} {path}":
                failures.append(f"{case.id}: reached {r.text!r}, not the upstream")
            elif want == 403 and r.text != "Access denied":
                failures.append(f"{case.id}: 403 body {r.text!r}")
    assert not failures, "\n".join(failures)


async def test_keepalive_connection_sees_policy_change_without_reconnecting(envoy_rig):
    rig = await envoy_rig()
    port = free_port()
    await rig.publish(state({port: (rule([CLIENT_IDENTITY], path="/a"),)}))
    await rig.envoy.wait_ready()
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1)) as client:
        r1 = await rig.get(client, port, "/a")
        assert r1.status_code == 200
        r2 = await rig.get(client, port, "/b")
        assert (r2.status_code, r2.text) == (403, "Access denied")
        before = _connection_ports(client)
        await rig.publish(state({port: (rule([CLIENT_IDENTITY], path="/b"),)}))
        r3 = await rig.get(client, port, "/b")
        r4 = await rig.get(client, port, "/a")
        after = _connection_ports(client)
    assert (r3.status_code, r4.status_code) == (200, 403)
    assert before and before == after, "the keep-alive connection was replaced across the policy change"


def _connection_ports(client: httpx.AsyncClient) -> list[int]:
    """Local ports of the client's pooled connections."""
    out = []
    for conn in client._transport._pool.connections:  # type: ignore[attr-defined]
        stream = conn._connection._network_stream if conn._connection else None
        if stream is not None:
            out.append(stream.get_extra_info("socket").getsockname()[1])
    return out


async def test_access_logs_reach_the_access_log_server(envoy_rig):
    rig = await envoy_rig()
    port = free_port()
    await rig.publish(state({port: (rule([CLIENT_IDENTITY], path="/ok"),)}))
    await rig.envoy.wait_ready()
    async with httpx.AsyncClient() as client:
        await rig.get(client, port, "/ok")
        await rig.get(client, port, "/denied", method="POST")
    got = {}
    while len(got) < 2:
        e = await asyncio.wait_for(rig.accesslog.get(), 10)
        got[e.path] = e
    ok, denied = got["/ok"], got["/denied"]
    assert (ok.node, ok.method, ok.status, ok.upstream) == ("n1", "GET", 200, f"127.0.0.1:{rig.upstream_port}")
    assert (denied.method, denied.status, denied.upstream, denied.denied) == ("POST", 403, "", True)
    assert denied.downstream_local == f"127.0.0.1:{port}"


async def test_listener_added_and_removed_with_proxy_ports(envoy_rig):
    rig = await envoy_rig()
    p1, p2 = free_port(), free_port()
    rules = (rule([CLIENT_IDENTITY], path="/x"),)
    await rig.publish(state({p1: rules}))
    await rig.envoy.wait_ready()
    async with httpx.AsyncClient() as client:
        await rig.publish(state({p1: rules, p2: rules}))
        assert (await rig.get(client, p2, "/x")).status_code == 200
        await rig.publish(state({p2: rules}))
        assert (await rig.get(client, p2, "/x")).status_code == 200
        with pytest.raises(httpx.ConnectError):
            for _ in range(50):  # the removed listener closes once drained
                await rig.get(client, p1, "/x", headers={"connection": "close"})
                await asyncio.sleep(0.1)


@pytest.mark.privileged
async def test_upstream_connections_carry_the_proxy_mark(envoy_rig):
    """The datapath recognises proxy-originated traffic by SO_MARK 0x0B00 on
    Envoy's upstream sockets (needs CAP_NET_ADMIN, hence root)."""
    import subprocess

    rig = await envoy_rig()
    port = free_port()
    await rig.publish(state({port: (rule([CLIENT_IDENTITY], path="/m"),)}))
    await rig.envoy.wait_ready()
    async with httpx.AsyncClient() as client:
        assert (await rig.get(client, port, "/m")).status_code == 200
        # Envoy keeps the upstream connection pooled: inspect it while it is open.
        out = subprocess.run(
            ["ss", "-tnHe", "state", "established", "dst", f"127.0.0.1:{rig.upstream_port}"],
            capture_output=True, text=True, check=True,
        ).stdout
    assert out.strip(), "no upstream connection from Envoy found"
    assert all("fwmark:0xb00" in line for line in out.strip().splitlines()), out
