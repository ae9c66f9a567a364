"""ACK/NACK, outages and restarts with the real Envoy (test-only loopback
rendering, see test_envoy_enforcement's docstring)."""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
import pytest

from tests.xds.conftest import free_port
from tests.xds.fixtures import CLIENT_IDENTITY, rule, state
from xds.errors import NackError
from xds.resources import ROUTE

pytestmark = pytest.mark.envoy

PROTOCOLS = [pytest.param(False, id="sotw"), pytest.param(True, id="delta")]


@pytest.mark.parametrize("delta", PROTOCOLS)
async def test_nack_keeps_last_good_config_and_captures_the_error(envoy_rig, delta):
    rig = await envoy_rig(delta=delta)
    port = free_port()
    good = await rig.publish(state({port: (rule([CLIENT_IDENTITY], path="/good"),)}))
    await rig.envoy.wait_ready()
    # An invalid RE2 regex forced into the route configuration (the policy
    # compiler would refuse it; the renderer passes regexes through).
    bad = rig.renderer.render(state({port: (rule([CLIENT_IDENTITY], path="/bad(("),)}))
    rig.cache.set_snapshot(rig.node, bad)
    with pytest.raises(NackError) as err:
        await rig.cache.wait_for_ack(rig.node, bad.version, 10)
    assert err.value.type_url == ROUTE
    assert "/bad((" in err.value.detail or "missing )" in err.value.detail
    assert rig.cache.last_error(rig.node) == err.value.detail
    assert rig.cache.acked_version(rig.node) == good.version
    async with httpx.AsyncClient() as client:
        assert (await rig.get(client, port, "/good")).status_code == 200  # last good config in force
        # A fixed policy is accepted and clears the error.
        await rig.publish(state({port: (rule([CLIENT_IDENTITY], path="/bad"),)}))
        assert rig.cache.last_error(rig.node) is None
        assert (await rig.get(client, port, "/bad")).status_code == 200


async def test_envoy_serves_last_config_while_xds_is_down_and_resumes(envoy_rig):
    rig = await envoy_rig()
    port = free_port()
    await rig.publish(state({port: (rule([CLIENT_IDENTITY], path="/v1"),)}))
    await rig.envoy.wait_ready()
    await rig.xds.stop()
    async with httpx.AsyncClient() as client:
        assert (await rig.get(client, port, "/v1")).status_code == 200
        assert (await rig.get(client, port, "/v2")).status_code == 403
        # A change made while the server is down is delivered when it returns.
        v2 = rig.renderer.render(state({port: (rule([CLIENT_IDENTITY], path="/v2"),)}))
        rig.cache.set_snapshot(rig.node, v2)
        await asyncio.sleep(0.3)
        assert (await rig.get(client, port, "/v1")).status_code == 200
        await rig.xds.start()
        await rig.cache.wait_for_ack(rig.node, v2.version, 30)
        assert (await rig.get(client, port, "/v2")).status_code == 200
        assert (await rig.get(client, port, "/v1")).status_code == 403


@pytest.mark.parametrize("delta", PROTOCOLS)
async def test_supervisor_restarts_killed_envoy_which_gets_its_config_back(envoy_rig, delta):
    rig = await envoy_rig(delta=delta)
    port = free_port()
    await rig.publish(state({port: (rule([CLIENT_IDENTITY], path="/x"),)}))
    await rig.envoy.wait_ready()
    first = rig.envoy.pid
    os.kill(first, signal.SIGKILL)
    for _ in range(200):
        if rig.envoy.restarts == 1 and rig.envoy.pid not in (None, first):
            break
        await asyncio.sleep(0.05)
    assert rig.envoy.restarts == 1 and rig.envoy.pid not in (None, first)
    await rig.envoy.wait_ready(timeout=30)  # LIVE only once its listeners came back over ADS
    async with httpx.AsyncClient() as client:
        r = await rig.get(client, port, "/x")
        assert (r.status_code, r.text) == (200, "upstream GET /x")
        assert (await rig.get(client, port, "/y")).status_code == 403


@pytest.mark.parametrize("delta", PROTOCOLS)
async def test_a_change_after_a_listener_removal_does_not_wait_for_its_drain(envoy_rig, delta):
    """A removed listener drains for Envoy's drain time while Envoy stays
    subscribed to its route configuration. The removal is in force at
    Envoy's LDS ACK, and the next policy change is enforced at once, while
    the old listener is still draining (a drain time longer than every wait
    here makes "at once" an event, not a timing)."""
    from sidecar.supervisor import admin_client

    rig = await envoy_rig(delta=delta, drain_time_s=120)
    kept, removed = free_port(), free_port()
    await rig.publish(state({kept: (rule([CLIENT_IDENTITY], path="/a"),), removed: (rule([CLIENT_IDENTITY], path="/b"),)}))
    await rig.envoy.wait_ready()
    # Both listeners active before one is removed: a listener removed while
    # still warming (its routes not yet there, which a loaded machine can
    # stretch past the LDS ACK) goes at once, with no drain to observe.
    deadline = asyncio.get_running_loop().time() + 30
    async with admin_client(rig.envoy.admin_socket) as admin:
        while "listener_manager.total_listeners_active: 2" not in (
            stats := (await admin.get("/stats", params={"filter": "total_listeners_active"})).text
        ):
            assert asyncio.get_running_loop().time() < deadline, stats
            await asyncio.sleep(0.05)
    await rig.publish(state({kept: (rule([CLIENT_IDENTITY], path="/a"),)}), timeout=20)
    await rig.publish(state({kept: (rule([CLIENT_IDENTITY], path="/c"),)}), timeout=20)
    async with httpx.AsyncClient() as client:
        assert (await rig.get(client, kept, "/c")).status_code == 200
        assert (await rig.get(client, kept, "/a")).status_code == 403
    async with admin_client(rig.envoy.admin_socket) as admin:
        stats = (await admin.get("/stats", params={"filter": "total_listeners_draining"})).text
    assert "listener_manager.total_listeners_draining: 1" in stats, stats
