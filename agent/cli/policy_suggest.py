"""`ciliate policy suggest`: least-privilege policies from observed traffic
(policy/suggest.py), read from the agent's flow history or from a file of
`ciliate monitor -o json` lines. The YAML goes to stdout (or one file per
workload with --out); how many events back each rule goes to stderr."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agent.api.address import AgentError, AgentUnavailable, default_socket
from policy.errors import CiliateError

if TYPE_CHECKING:
    from agent.core.models import FlowEvent

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def add_parser(psub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    s = psub.add_parser(
        "suggest",
        help="write least-privilege policies from the traffic the agent saw (or a saved flow file)",
        description=("Traffic: the agent's flow history (--since), or --flows FILE of `ciliate monitor -o json` "
                     "lines. Run the workloads in policy audit mode first, so everything they need shows up. "
                     "Exit 0, or 2 on bad input."),
    )
    s.add_argument("--flows", metavar="FILE", help="`ciliate monitor -o json` output instead of the agent's history")
    s.add_argument("--since", type=float, metavar="SECONDS", help="only the agent's last SECONDS of flows")
    s.add_argument("--exact-paths", action="store_true", help="keep HTTP paths as seen (no [0-9]+ for numeric segments)")
    s.add_argument("--out", metavar="DIR", help="one file per workload in DIR instead of stdout")
    s.add_argument("--socket", default=str(default_socket()), help="agent API socket (env CILIATE_SOCKET)")
    s.set_defaults(func=run)


def read_flow_file(path: Path) -> list["FlowEvent"]:
    """Every JSON event line of the file; other lines (a banner) are skipped,
    a line that is an event of the wrong shape is an error naming the line."""
    # The API models are imported here, not for every `ciliate policy` command.
    from pydantic import ValidationError

    from agent.core.models import FlowEvent

    events = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CiliateError(f"{path}: cannot read: {e}") from None
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            events.append(FlowEvent.model_validate(json.loads(line)))
        except (json.JSONDecodeError, ValidationError) as e:
            first = str(e).splitlines()[0]
            raise CiliateError(f"{path}:{n}: not a flow event: {first}") from None
    return events


def run(args: argparse.Namespace) -> int:
    import yaml

    from policy.suggest import suggest

    try:
        if args.flows:
            events = read_flow_file(Path(args.flows))
        else:
            from agent.api.client import AgentClient

            with AgentClient(Path(args.socket)) as client:
                events = list(client.flow_history(args.since).events)
    except (CiliateError, AgentUnavailable, AgentError) as e:
        print(f"ciliate: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    suggestions, skipped = suggest(events, exact_paths=args.exact_paths)
    docs = [s.document() for s in suggestions]
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for d in docs:
            # Labels are a tenant's to choose (the namespace one too, outside
            # Kubernetes): the file name keeps only safe characters, so a
            # namespace such as "../x" cannot write outside DIR.
            stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{d['metadata']['namespace']}-{d['metadata']['name']}").lstrip(".")
            f = out / f"{stem}.yaml"
            f.write_text(yaml.safe_dump(d, sort_keys=False))
            print(f"wrote {f}", file=sys.stderr)
    elif docs:
        print(yaml.safe_dump_all(docs, sort_keys=False), end="")
    print(f"# {len(events)} events, {len(docs)} workloads", file=sys.stderr)
    for s in suggestions:
        print(f"# {s.workload.namespace}/{s.workload.name}:", file=sys.stderr)
        for direction, peer, port, n in s.counts():
            print(f"#   {direction:<7} {peer} {port}: {n} events", file=sys.stderr)
    for why, n in sorted(skipped.items()):
        print(f"# skipped {n} events: {why}", file=sys.stderr)
    return EXIT_OK
