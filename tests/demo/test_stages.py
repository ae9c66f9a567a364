"""The stage loop every demo shares (demo/stages.py), driven by a fake
runner: stages in order, each one's policy applied before its requests,
one line per request and one row each for the summary table."""

from __future__ import annotations

import io

from demo.scenario import STAGES, Request, Stage
from demo.stages import run_stages
from demo.table import print_table


def test_each_stage_applies_its_policy_then_sends_its_requests_in_order() -> None:
    calls: list[str] = []
    out = io.StringIO()

    def apply(stage: Stage) -> None:
        calls.append(f"apply {stage.policy_files}")

    def send(req: Request) -> dict[str, object]:
        calls.append(f"send {req.ship}")
        # Every ship gets what the scenario expects.
        if req.expect == "dropped":
            return {"error": "timeout"}
        return {"status": int(req.expect), "body": "Access denied\n" if req.expect == "403" else "Ship landed\n"}

    rows = run_stages(STAGES, out, apply, send)

    expected_calls = [c for s in STAGES for c in (f"apply {s.policy_files}", *(f"send {r.ship}" for r in s.requests))]
    assert calls == expected_calls
    assert [r.stage for r in rows] == [str(n) for n, s in enumerate(STAGES, 1) for _ in s.requests]
    assert all(r.ok for r in rows)
    text = out.getvalue()
    assert f"\nstage 3: {STAGES[2].title}\n" in text
    assert "  tiefighter PUT /v1/exhaust-port" in text and "observed 403      ok       Access denied" in text
    assert print_table(rows, io.StringIO()) == 0


def test_a_runner_names_its_requests_its_own_way() -> None:
    stage = Stage("one", (), (Request("xwing", "POST", "/v1/request-landing", "200"),))
    rows = run_stages([stage], io.StringIO(), lambda s: None, lambda r: {"status": 403, "body": "no"},
                      describe=lambda r: f"{r.ship}@node3 {r.method} {r.path}")
    assert [(r.request, r.observed, r.ok) for r in rows] == [("xwing@node3 POST /v1/request-landing", "403", False)]


def test_the_ipv6_stage_reads_apart_from_ipv4_and_keeps_the_policy() -> None:
    from demo.scenario import IPV6_STAGE

    out = io.StringIO()
    calls: list[str] = []
    rows = run_stages((IPV6_STAGE,), out, lambda s: calls.append(f"apply {s.policy_files}"),
                      lambda r: {"status": 200} if r.expect == "200" else {"error": "timeout"})
    assert calls == ["apply ()"]  # nothing applied: the last stage's policy covers IPv6 too
    assert all(r.request.endswith(" v6") and len(r.request) <= 38 for r in rows), rows
    assert all(r.family == 6 for r in IPV6_STAGE.requests)
