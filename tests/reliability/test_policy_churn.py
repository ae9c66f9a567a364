"""A policy flipping back and forth under continuous traffic, between the
L3/L4 policy and the L7 one (same policy name, so each write replaces the
other). Both deny every xwing request; both allow tiefighter's landing. Not
one request that both versions deny may get through during any change, and
none that both allow may fail; the counts are in every assertion message."""

from __future__ import annotations

import os
import time

import pytest

from tests.reliability.conftest import EXHAUST, LAND, STARWARS, build_starwars, outcomes, sample, tally

VERSIONS = [(STARWARS / "1-l3l4.yaml").read_text(), (STARWARS / "2-l7.yaml").read_text()]
WAITED_FLIPS = 6  # each waits until the agent reports the new version enforced
BURST_FLIPS = 10  # back to back, 50 ms apart: the agent coalesces and must stay safe


@pytest.mark.privileged
@pytest.mark.envoy
def test_flipping_policy_never_lets_a_doubly_denied_request_through(node) -> None:
    sw = build_starwars(node, STARWARS / "1-l3l4.yaml")
    flows = {
        "xwing POST landing (denied by both)": node.traffic("xwing", LAND[0], sw.dst(), LAND[1], timeout=0.3, interval=0.01),
        "xwing PUT exhaust (denied by both)": node.traffic("xwing", EXHAUST[0], sw.dst(), EXHAUST[1], timeout=0.3, interval=0.01),
        "tiefighter POST landing (allowed by both)": node.traffic("tiefighter", LAND[0], sw.dst(), LAND[1], interval=0.02, timeout=2.0),
        "tiefighter PUT exhaust (200 under L3/L4, 403 under L7)": node.traffic(
            "tiefighter", EXHAUST[0], sw.dst(), EXHAUST[1], interval=0.02, timeout=2.0,
        ),
    }
    target = node.policies / "starwars.yaml"
    for i in range(WAITED_FLIPS):
        node.apply_policy(STARWARS / ("2-l7.yaml" if i % 2 == 0 else "1-l3l4.yaml"), name="starwars.yaml")
        time.sleep(0.2)
    for i in range(BURST_FLIPS):
        tmp = node.policies / ".starwars.yaml.tmp"
        tmp.write_text(VERSIONS[(i + 1) % 2])
        os.replace(tmp, target)
        time.sleep(0.05)
    node.wait_policy("starwars.yaml")
    sample("under the last version", flows.values())
    results = {name: lines.stop() for name, lines in flows.items()}

    report = "\n".join(f"{name:56} {tally(outcomes(lines))}" for name, lines in results.items())
    print(report)
    xwing_hits = sw.hits(80, "xwing")
    xwing_answered = [o for name, lines in results.items() if name.startswith("xwing") for o in outcomes(lines) if "status" in o]
    xwing_sent = sum(len(outcomes(lines)) for name, lines in results.items() if name.startswith("xwing"))
    assert xwing_sent >= 20, f"too few denied requests to mean anything\n{report}"
    assert (len(xwing_hits), len(xwing_answered)) == (0, 0), (
        f"{len(xwing_hits)} of {xwing_sent} xwing requests reached the server, {len(xwing_answered)} got an answer\n{report}"
    )
    landing = outcomes(results["tiefighter POST landing (allowed by both)"])
    failed = [o for o in landing if o.get("status") != 200]
    assert not failed, f"{len(failed)} of {len(landing)} landings allowed by both versions failed: {failed[:3]}\n{report}"
    exhaust = tally(outcomes(results["tiefighter PUT exhaust (200 under L3/L4, 403 under L7)"]))
    assert set(exhaust) == {"200", "403"}, f"both versions must have been in force under traffic\n{report}"
