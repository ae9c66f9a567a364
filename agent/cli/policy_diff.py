"""`ciliate policy diff`: which flows would change verdict, before applying.

    ciliate policy diff --old PATH... --new PATH... [--endpoints FILE] [-o json]
    ciliate policy diff --observed --new PATH... [--since SECONDS]

The first form compiles both sets over the same endpoints (offline from
--endpoints, a YAML list of `{labels: {...}}` entries, or the running
agent's endpoints) and lists every flow whose verdict changes
(policy/diff.py; the report it prints: policy/diff_report.py). The second
replays the flows the agent saw recently (GET /v1/flows/history) against
the new set (policy/diff_observed.py).
Exit 0 = nothing changes, 1 = something does, 2 = the question could not be
asked (bad files, no agent).
"""

from __future__ import annotations

import argparse
import json
import sys
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from agent.api.address import AgentError, AgentUnavailable, default_socket
from agent.cli.policy_commands import add_stack_flag, node_labels
from agent.cli.parse_cache import load_policies
from policy.compiled import SNIRule
from policy.compiler import compile_state
from policy.diff import diff_policies
from policy.diff_observed import ReplayReport, replay
from policy.diff_report import PolicyDiff, port_text, request_text, rule_text
from policy.endpoint import Endpoint
from policy.errors import CiliateError
from policy.families import Stack
from policy.labels import selector_key_problem, value_problem
from policy.fqdn_resolve import names_from_flags
from policy.fqdn_resolve import resolve_all as resolve_fqdns_all
from policy.services import resolve_all
from policy.model import Policy
from policy.trace import TLSHello

if TYPE_CHECKING:
    from agent.api.client import AgentClient

EXIT_SAME, EXIT_CHANGED, EXIT_BAD_INPUT = 0, 1, 2
# Offline endpoints without an address get one from here, in file order.
OFFLINE_NET = "100.64.0.0"


class _EndpointSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: dict[str, str]
    ipv4: IPv4Address | None = None


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add `diff` to the `policy` group (created by policy_commands)."""
    pol = sub.choices["policy"]
    psub = next(a for a in pol._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    d = psub.add_parser(
        "diff",
        help="which flows change verdict between two policy sets (or for the flows the agent saw)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    d.add_argument("--old", nargs="+", action="extend", default=[], metavar="PATH", help="policies in force now")
    d.add_argument("--new", nargs="+", action="extend", required=True, metavar="PATH", help="proposed policies")
    d.add_argument("--endpoints", metavar="FILE", help="YAML list of {labels: {...}} (default: the running agent's endpoints)")
    d.add_argument(
        "--node-label", action="append", default=[], metavar="KEY=VALUE",
        help="a label of the node (host policies' nodeSelector): the node is then an endpoint of the diff, `host`",
    )
    d.add_argument(
        "--resolve", action="append", default=[], metavar="NAME=ADDR[,ADDR]",
        help="what NAME resolves to, as the DNS proxy would have learned it, for toFQDNs in both sets; repeat for more",
    )
    d.add_argument("--observed", action="store_true", help="replay the flows the agent saw recently against --new")
    d.add_argument("--since", type=float, metavar="SECONDS", help="with --observed: only the last SECONDS (default: all the agent keeps)")
    d.add_argument("--socket", default=str(default_socket()), help="agent API socket (env CILIATE_SOCKET)")
    add_stack_flag(d)
    d.add_argument("-o", "--output", choices=("text", "json"), default="text")
    d.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        return _diff(args)
    except (CiliateError, AgentUnavailable, AgentError) as e:
        print(f"ciliate: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _policies(paths: list[str], which: str, resolve: list[str] | None = None) -> list[Policy]:
    res = load_policies(paths)
    if not res.ok:
        for e in res.errors:
            print(str(e), file=sys.stderr)
        raise CiliateError(f"{len(res.errors)} error(s) in the {which} policies; fix them first (ciliate policy validate)")
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)
    # No Service source here: a toServices peer selects nothing (said on stderr).
    policies, notes = resolve_all(res.policies, None)
    try:
        names = names_from_flags(resolve or [])
    except ValueError as e:
        raise CiliateError(str(e)) from None
    policies, fqdn_notes = resolve_fqdns_all(policies, names)
    notes += fqdn_notes
    for n in notes:
        print(f"note: {which} policies: {n}", file=sys.stderr)
    return policies


def load_endpoints(path: str) -> list[Endpoint]:
    """The --endpoints file; errors name the file, the entry and the field."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise CiliateError(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise CiliateError(f"{path}: not YAML: {e}") from None
    if not isinstance(data, list):
        raise CiliateError(f"{path}: expected a list of {{labels: {{...}}}} entries")
    specs = []
    for i, item in enumerate(data):
        try:
            specs.append(_EndpointSpec.model_validate(item))
        except ValidationError as e:
            problems = [f"[{i}]" + "".join(f".{x}" for x in err["loc"]) + f": {err['msg']}" for err in e.errors()]
            raise CiliateError(f"{path}: {'; '.join(problems)}") from None
        for key, value in specs[-1].labels.items():
            problem = selector_key_problem(key) or value_problem(value)
            if problem:
                raise CiliateError(f"{path}: [{i}].labels.{key}: {problem}")
    used = {s.ipv4 for s in specs if s.ipv4 is not None}
    nxt = int(IPv4Address(OFFLINE_NET))
    out = []
    for i, s in enumerate(specs):
        addr = s.ipv4
        if addr is None:
            nxt += 1
            while IPv4Address(nxt) in used:
                nxt += 1
            addr = IPv4Address(nxt)
        out.append(Endpoint(i + 1, dict(s.labels), addr))
    return out


def _agent_client(socket: str) -> "AgentClient":
    from agent.api.client import AgentClient  # httpx and the API models: only when the agent is asked

    return AgentClient(Path(socket))


def _agent_endpoints(client: "AgentClient") -> list[Endpoint]:
    return [Endpoint(e.id, dict(e.labels), e.ipv4, e.ipv6) for e in client.endpoints()]


def _diff(args: argparse.Namespace) -> int:
    new = _policies(args.new, "new", args.resolve)
    stack = Stack(args.stack)
    if args.observed:
        with _agent_client(args.socket) as client:
            eps = load_endpoints(args.endpoints) if args.endpoints else _agent_endpoints(client)
            history = client.flow_history(args.since)
        report = replay(history.events, compile_state(new, eps, stack=stack))
        if args.output == "json":
            print(json.dumps(report.to_dict() | {"evicted": history.evicted}, indent=2))
        else:
            print_replay(report, history.evicted)
        return EXIT_CHANGED if report.changed else EXIT_SAME
    if not args.old:
        raise CiliateError("--old is required (or use --observed)")
    old = _policies(args.old, "old", args.resolve)
    if args.endpoints:
        eps = load_endpoints(args.endpoints)
    else:
        with _agent_client(args.socket) as client:
            eps = _agent_endpoints(client)
    # The node is an endpoint when a host policy could select it.
    host = bool(args.node_label) or any(s.node_subject is not None for p in (*old, *new) for s in p.specs)
    d = diff_policies(old, new, eps, stack=stack, host_labels=node_labels(args.node_label) if host else None)
    if args.output == "json":
        print(json.dumps(d.to_dict(), indent=2))
    else:
        print_diff(d)
        unjudged = {n for n in (*d.old.ipcache, *d.new.ipcache) if not stack.runs(n.version)}
        if unjudged:
            print(f"\nnote: {_plural(len(unjudged), 'prefix', 'prefixes')} of a family this node does not run "
                  f"({stack.value} stack) not judged: its datapath drops those packets; --stack dual judges them")
    return EXIT_CHANGED if d.changes else EXIT_SAME


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n:,} {one if n == 1 else (many or one + 's')}"


def change_line(c: Any) -> str:
    where = port_text(c.protocol, c.ports)
    if c.layer == "l3l4":
        line = f"{where:<14} {c.old} -> {c.new}"
        rules = c.new_http if c.new == "allowed" else ()
        if rules:
            line += f"  (HTTP rules apply: {' | '.join(rule_text(r) for r in rules)})"
        return line
    if c.http_rule is None and c.change == "removed":
        what = "any request" + (f" other than {' | '.join(rule_text(r) for r in c.new_http)}" if c.new_http else "")
    elif c.http_rule is None:
        what = "any request" + (f" (was only {' | '.join(rule_text(r) for r in c.old_http)})" if c.old_http else "")
    else:
        what = f"{rule_text(c.http_rule)} (rule {c.change})"
    # A serverNames listener judges connections by their TLS server name, not HTTP requests.
    layer = "TLS" if isinstance(c.sample, TLSHello) or any(isinstance(r, SNIRule) for r in (*c.old_http, *c.new_http)) else "HTTP"
    if layer == "TLS":
        what = what.replace("any request", "any connection")
    return f"{where:<14} {layer} {c.old} -> {c.new}: {what}  e.g. {request_text(c.sample)}"


def print_diff(d: PolicyDiff) -> None:
    n = d.counts()
    if not d.changes:
        print(f"no flow changes verdict ({_plural(d.endpoints, 'endpoint')}, {_plural(d.identities, 'identity', 'identities')})")
        return
    print(f"{_plural(n['changes'], 'flow')} change verdict between {_plural(n['pairs'], 'source/destination pair')}: "
          f"{n['now_denied']:,} become denied, {n['now_allowed']:,} become allowed "
          f"({_plural(d.endpoints, 'endpoint')}, {_plural(d.identities, 'identity', 'identities')})")
    for (src, dst), changes in d.groups():
        print(f"\n{src.name} -> {dst.name}: {_plural(len(changes), 'change')}")
        for c in changes:
            print(f"  {change_line(c)}")


def print_replay(r: ReplayReport, evicted: int) -> None:
    n = r.counts()
    span = f"{(r.last - r.first) / 60:.0f} min" if r.first is not None and r.last is not None else "no time"
    print(f"replayed {_plural(n['replayed'], 'observed flow')} ({span}): {n['now_denied']:,} would be dropped, "
          f"{n['now_allowed']:,} newly allowed, {n['unchanged']:,} unchanged; {n['skipped']:,} skipped"
          + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(r.skipped.items()))})" if r.skipped else "")
          + (f"; the agent's history had dropped {evicted:,} older events" if evicted else ""))
    for g in r.changed:
        print(f"  {g.sentence()} (e.g. {g.example})")
