"""Policy audit mode in the real Envoy: an audited endpoint's listener lets
every request through to the upstream (which answers), while its rules run as
RBAC shadow rules whose would-be denial reaches the access log; switching
audit off enforces again through the same listener, nothing restarted.
Both RBAC filters of an egress listener (the sender's and the receivers')
report their shadow verdict under their own keys."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import httpx
import pytest

from policy.compiled import CompiledState, Direction
from tests.xds.conftest import free_port
from tests.xds.fixtures import CLIENT_IDENTITY, rule, state

pytestmark = pytest.mark.envoy


def _audited(s: CompiledState) -> CompiledState:
    return replace(s, endpoints={i: replace(ep, audit=True) for i, ep in s.endpoints.items()})


async def _log(rig, n: int) -> dict:
    got = {}
    while len(got) < n:
        e = await asyncio.wait_for(rig.accesslog.get(), 10)
        got[(e.method, e.path)] = e
    return got


@pytest.mark.parametrize("direction", [Direction.INGRESS, Direction.EGRESS], ids=["ingress", "egress"])
async def test_audit_lets_requests_through_and_logs_would_be_denials(envoy_rig, direction):
    rig = await envoy_rig()
    port = free_port()
    enforcing = state({port: (rule([CLIENT_IDENTITY], method="GET", path="/ok"),)}, direction=direction)
    await rig.publish(_audited(enforcing))
    await rig.envoy.wait_ready()
    async with httpx.AsyncClient() as client:
        denied_would_be = await rig.get(client, port, "/secret", method="POST")
        allowed = await rig.get(client, port, "/ok")
        assert (denied_would_be.status_code, denied_would_be.text) == (200, "upstream POST /secret")
        assert allowed.status_code == 200
        got = await _log(rig, 2)
        audit, ok = got[("POST", "/secret")], got[("GET", "/ok")]
        assert audit.audited and not audit.denied and audit.upstream
        assert not ok.audited and not ok.shadow_denied

        # Audit off: the same listener enforces again.
        await rig.publish(replace(enforcing, revision=2))
        r = await rig.get(client, port, "/secret", method="POST")
        assert r.status_code == 403
        e = (await _log(rig, 1))[("POST", "/secret")]
        assert e.denied and not e.audited


async def test_audited_receiver_lets_the_senders_proxy_pass_what_its_rules_would_deny(envoy_rig):
    """The receiver (127.0.0.1, see test_receiver_rules) audits, the sender
    enforces: the receiver's ingress rules on the sender's egress listener
    only report, the sender's own rules still deny."""
    from tests.xds.fixtures import sender_and_receiver

    rig = await envoy_rig()
    port = free_port()
    st = sender_and_receiver(receiver_ip="127.0.0.1", egress_port=port)
    await rig.publish(replace(st, endpoints={**st.endpoints, 2: replace(st.endpoints[2], audit=True)}))
    await rig.envoy.wait_ready()
    async with httpx.AsyncClient() as client:
        private = await rig.get(client, port, "/private")
        put = await rig.get(client, port, "/public/a", method="PUT")
        public = await rig.get(client, port, "/public/a")
    assert (private.status_code, put.status_code, public.status_code) == (200, 403, 200)
    got = await _log(rig, 3)
    assert got[("GET", "/private")].audited
    assert got[("PUT", "/public/a")].denied and not got[("PUT", "/public/a")].audited
    assert not got[("GET", "/public/a")].shadow_denied
