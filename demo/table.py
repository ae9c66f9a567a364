"""The table both demos print (`ciliate demo`, `make compose-demo`): per
request the stage, the request, what the scenario expects, what was observed,
and what the user would see from curl (the body, e.g. the proxy's
`Access denied` for a request the L7 policy refuses; nothing for a drop).
Pure formatting: callers pass rows and a stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TextIO


@dataclass(frozen=True)
class Row:
    stage: str
    request: str  # "tiefighter PUT /v1/exhaust-port"
    expect: str  # "200", "403" or "dropped"
    observed: str
    body: str = ""  # the response body; empty for a drop

    @property
    def ok(self) -> bool:
        return self.expect == self.observed


def curl_view(outcome: dict[str, object]) -> str:
    """What curl prints for one outcome: the body, or why there is none."""
    if "status" in outcome:
        return str(outcome.get("body", "")).strip()
    if outcome.get("error") == "timeout":
        return "(no answer: timed out)"
    return f"({outcome.get('error')}: {outcome.get('detail', '')})".strip()


def line(row: Row) -> str:
    """One live progress line, printed as each request completes."""
    mark = "ok" if row.ok else "MISMATCH"
    return f"  {row.request:38} expected {row.expect:8} observed {row.observed:8} {mark:8} {row.body}"


def print_table(rows: list[Row], out: TextIO) -> int:
    """Prints the summary table; returns how many rows did not match."""
    print(f"\n{'stage':5}  {'request':38}  {'expected':8}  {'observed':8}  curl shows", file=out)
    for r in rows:
        flag = "" if r.ok else "   <-- MISMATCH"
        print(f"{r.stage:5}  {r.request:38}  {r.expect:8}  {r.observed:8}  {r.body}{flag}", file=out)
    bad = sum(not r.ok for r in rows)
    print(f"\n{len(rows) - bad} of {len(rows)} requests as expected", file=out)
    return bad
