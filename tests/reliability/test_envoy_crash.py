"""SIGKILL of the sidecar Envoy while L7 traffic flows.

What a user must see: while Envoy is down, requests that need L7 policy
fail closed (they never reach the server: its request log proves it), the
agent restarts Envoy by itself, and then the L7 policy is enforced again
(403 `Access denied` for the denied call, 200 for the allowed one)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.reliability.conftest import EXHAUST, LAND, STARWARS, build_starwars, outcomes, sample, tally, wait_for

SLACK = 0.3  # s: a request Envoy forwarded just before the kill may still be logged


@pytest.mark.privileged
@pytest.mark.envoy
def test_envoy_sigkill_fails_closed_and_is_restarted(node) -> None:
    sw = build_starwars(node, STARWARS / "2-l7.yaml")
    # A short client timeout: Envoy is back within a second or two, and the
    # outage must be sampled by several requests.
    land = node.traffic("tiefighter", LAND[0], sw.dst(), LAND[1], interval=0.03, timeout=0.3)
    exhaust = node.traffic("tiefighter", EXHAUST[0], sw.dst(), EXHAUST[1], interval=0.03, timeout=0.3)
    wait_for("L7 traffic flowing", lambda: any(o.get("status") == 200 for o in outcomes(land)))
    old = node.envoy_pid()
    assert old is not None, node.status()
    restarts = node.status()["proxy"]["envoy_restarts"]

    t_kill = time.time()
    os.kill(old, signal.SIGKILL)
    new = wait_for("a new Envoy", lambda: (p := node.envoy_pid()) not in (None, old) and p, timeout=30)
    # Back when a request started after the kill gets its 200 again.
    wait_for("L7 traffic back", lambda: any(o.get("status") == 200 for o in outcomes(land, t_kill + SLACK)), timeout=30)
    t_back = min(o["t"] for o in outcomes(land, t_kill + SLACK) if o.get("status") == 200)
    sample("after the restart", (land, exhaust))
    land_out, exhaust_out = land.stop(), exhaust.stop()

    report = "\n".join(
        f"{name:28} before kill: {tally(outcomes(o, 0, t_kill))}  Envoy down: {tally(outcomes(o, t_kill, t_back))}  "
        f"after: {tally(outcomes(o, t_back))}"
        for name, o in (("POST /v1/request-landing", land_out), ("PUT /v1/exhaust-port", exhaust_out))
    )
    print(report)
    down = outcomes(land_out, t_kill, t_back)
    assert len(down) >= 1, f"the outage was not sampled by requests\n{report}"
    # Fail closed: the denied call never reached the server, and nothing did
    # while Envoy was down (a request it forwarded just before dying aside).
    assert sw.hits(80, "tiefighter", *EXHAUST) == [], report
    during = [h for h in sw.hits(80, "tiefighter") if t_kill + SLACK < h["_at"] < t_back]
    assert during == [], f"{len(during)} requests reached the server while Envoy was down\n{report}"
    landed = len(sw.hits(80, "tiefighter", *LAND))
    ok = sum(1 for o in land_out if o.get("status") == 200)
    # +2: the request in flight when Envoy died, and the one in flight when
    # land.stop() killed the generator (it reached the server, its outcome
    # was never printed). These checks bite since the proxy keeps the client's
    # address: before, proxied requests reached the server from the node's.
    assert landed <= ok + 2, f"{landed} landings reached the server but only {ok} got a 200 through Envoy\n{report}"
    assert 200 not in {o.get("status") for o in exhaust_out}, report
    assert all(o.get("status") == 403 for o in outcomes(exhaust_out, t_back + SLACK)), report
    assert all(o.get("status") == 200 for o in outcomes(land_out, t_back)), report
    # The agent did it, and says so.
    st = node.status()
    assert st["ok"] and st["proxy"]["envoy_pid"] == new and st["proxy"]["envoy_restarts"] == restarts + 1, st
    got = node.request("tiefighter", EXHAUST[0], sw.dst(), EXHAUST[1])
    assert (got.get("status"), got.get("body")) == (403, "Access denied"), got
