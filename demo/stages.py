"""Going through the scenario's stages, the same way in every demo (`ciliate
demo` on one node, on a cluster, through the Kubernetes API, and on Docker):
the stage's title, its policy put in force by the runner, its requests sent
by the runner, and one line per request as it completes. The rows come back
for the summary table (demo/table.py). The runner does the I/O through the
two callables; this module only orders and prints."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TextIO

from demo.scenario import Request, Stage, observed_label
from demo.table import Row, curl_view, line


def plain_request(req: Request) -> str:
    """How a request reads in the table when every ship is on one node."""
    return f"{req.ship} {req.method} {req.path}" + (" v6" if req.family == 6 else "")


def run_stages(
    stages: Iterable[Stage],
    out: TextIO,
    apply: Callable[[Stage], None],
    send: Callable[[Request], dict[str, object]],
    describe: Callable[[Request], str] = plain_request,
) -> list[Row]:
    """`apply` puts a stage's policy in force (and prints what it did);
    `send` makes one request and returns the client's outcome."""
    rows: list[Row] = []
    for n, stage in enumerate(stages, 1):
        print(f"\nstage {n}: {stage.title}", file=out, flush=True)
        apply(stage)
        for req in stage.requests:
            outcome = send(req)
            row = Row(f"{n}", describe(req), req.expect, observed_label(outcome), curl_view(outcome))
            rows.append(row)
            print(line(row), file=out, flush=True)
    return rows
