"""`kill -9` of the agent while traffic flows, then a restart.

What a user must see: the kernel keeps enforcing while the agent is gone
(allowed requests keep landing, denied ones stay dropped or 403), a
connection opened before the crash keeps working, and the restarted agent
adopts the pinned state without a single wrong verdict, reporting the same
endpoints with the same identities, ready again."""

from __future__ import annotations

import time

import pytest

from tests.reliability.conftest import (
    EXHAUST, L4_PORT, L7_PORT, LAND, POLICIES, Starwars, build_starwars, label, outcomes, sample, tally, wait_for,
)

AWAY = 10  # requests of every flow while the agent is dead


@pytest.mark.privileged
@pytest.mark.envoy
def test_agent_sigkill_under_traffic_keeps_enforcing_and_restart_adopts(node) -> None:
    sw: Starwars = build_starwars(node, POLICIES / "mixed.yaml", ports=(L7_PORT, L4_PORT))
    before = sw.endpoints()
    assert {s for _, _, s in before.values()} == {"ready"}, before

    # (flow, expected outcome of every request); denied flows use a short
    # timeout so they are sampled often too.
    flows = {
        "tiefighter POST landing :80 (L7 allowed)": (node.traffic("tiefighter", LAND[0], sw.dst(L7_PORT), LAND[1]), {"200"}),
        "tiefighter PUT exhaust :80 (L7 denied)": (node.traffic("tiefighter", EXHAUST[0], sw.dst(L7_PORT), EXHAUST[1]), {"403"}),
        "tiefighter keep-alive :8080 (L3/L4 allowed)": (
            node.traffic("tiefighter", "POST", sw.dst(L4_PORT), LAND[1], keepalive=True), {"200"},
        ),
        "xwing POST landing :80 (denied)": (node.traffic("xwing", LAND[0], sw.dst(L7_PORT), LAND[1], timeout=0.5), {"timeout"}),
        "xwing POST landing :8080 (denied)": (node.traffic("xwing", LAND[0], sw.dst(L4_PORT), LAND[1], timeout=0.5), {"timeout"}),
    }
    sample("before the crash", (lines for lines, _ in flows.values()))

    t_kill = time.time()
    node.kill_agent()
    sample("while the agent is dead", (lines for lines, _ in flows.values()), n=AWAY)
    t_restart = time.time()
    node.start_agent()
    wait_for("every endpoint ready after the restart", lambda: {s for _, _, s in sw.endpoints().values()} == {"ready"})
    t_ready = time.time()
    # The restarted agent's Envoy takes over from the one the dead agent left
    # (drained and retired once the new one has the configuration): keep
    # going past that hand-over.
    wait_for("the old Envoy retired", lambda: node.status()["ok"] and node.envoy_pids() == [node.envoy_pid()], timeout=40)
    sample("after the hand-over", (lines for lines, _ in flows.values()))
    t_end = time.time()
    results = {name: (lines.stop(), expect) for name, (lines, expect) in flows.items()}

    phases = {"before": (0, t_kill), "agent dead": (t_kill, t_restart), "restarting": (t_restart, t_ready), "after": (t_ready, t_end)}
    report = "\n".join(
        f"{name:44} " + "  ".join(f"{ph}: {tally(outcomes(lines, a, b))}" for ph, (a, b) in phases.items())
        for name, (lines, _) in results.items()
    )
    print(report)
    for name, (lines, expect) in results.items():
        wrong = [o for o in outcomes(lines) if label(o) not in expect]
        assert not wrong, f"{name}: {len(wrong)} requests not {expect}, first {wrong[:3]}\n{report}"
        assert outcomes(lines, t_kill, t_restart), f"{name}: no request while the agent was dead\n{report}"
    # The keep-alive connection opened before the crash carried every request.
    keepalive = outcomes(results["tiefighter keep-alive :8080 (L3/L4 allowed)"][0])
    assert {o["conn"] for o in keepalive} == {1}, f"the established connection was re-opened\n{report}"
    # Nothing denied ever reached a server.
    assert sw.hits(L7_PORT, "xwing") == [] and sw.hits(L4_PORT, "xwing") == [], report
    assert sw.hits(L7_PORT, "tiefighter", *EXHAUST) == [], report
    # Same endpoints, same identities, all ready.
    assert sw.endpoints() == before
