"""`ciliate policy validate|trace`: offline policy tools; see agent/cli/ciliate.py for
how they are registered. Reads policy files; no kernel, no Envoy, no agent.

Exit codes: validate 0 = all valid, 1 = errors (one line each,
`FILE[:DOC]: FIELD.PATH: reason`). trace 0 = allowed, 1 = denied,
2 = the question could not be asked (bad policies, bad SPEC or port).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from policy.compiled import Protocol
from policy.compiler import compile_state
from policy.endpoint import Endpoint
from policy.errors import CiliateError
from policy.families import Stack
from policy.load import load_paths
from policy.trace import HTTPRequest, Party, TraceResult, parse_party, trace

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_DENIED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3

# Synthetic endpoint ids for `labels:` SPECs in an offline trace.
_SRC_ID, _DST_ID = 1, 2


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add this module's subcommands to the `ciliate` parser."""
    pol = sub.add_parser("policy", help="check policies and trace flows offline")
    psub = pol.add_subparsers(dest="policy_command", metavar="SUBCOMMAND")
    pol.set_defaults(func=lambda _a: (pol.print_help(sys.stderr), 2)[1])

    v = psub.add_parser(
        "validate",
        help="check policy files and directories",
        description="Exit 0 when every policy is valid; else exit 1 with one line per error: FILE[:DOC]: FIELD.PATH: reason",
    )
    v.add_argument("paths", nargs="+", metavar="PATH", help="YAML/JSON files or directories (recursive)")
    v.add_argument("-o", "--output", choices=("text", "json"), default="text")
    v.set_defaults(func=_guard(_validate))

    t = psub.add_parser(
        "trace",
        help="would this flow be allowed? (L3/L4, HTTP and TLS server names)",
        description=(
            "Answer from the compiled state the datapath uses. SPEC is labels:k=v,k=v (a local endpoint), "
            "ip:ADDRESS (an outside IPv4 or IPv6 address) or entity:NAME (host, world, remote-node, ...). "
            "Exit 0 allowed, 1 denied, 2 bad input."
        ),
    )
    add_stack_flag(t)
    t.add_argument("--policies", nargs="+", action="extend", required=True, metavar="PATH")
    t.add_argument("--src", required=True, metavar="SPEC")
    t.add_argument("--dst", required=True, metavar="SPEC")
    t.add_argument("--dport", required=True, metavar="N[/TCP|UDP]")
    t.add_argument("--method", help="HTTP method (judged by the L7 rules when the flow is redirected)")
    t.add_argument("--path", dest="http_path", help="HTTP path")
    t.add_argument("--host", help="HTTP host (authority)")
    t.add_argument(
        "--header", action="append", default=[], metavar='"Name: value"',
        help="HTTP header; repeat for more, the same name twice sends it on two lines",
    )
    t.add_argument(
        "--sni", metavar="NAME",
        help="TLS server name the client sends (judged by serverNames rules when the flow is redirected to them; "
             "without it such a port sees a plain connection when an HTTP request is given)",
    )
    t.add_argument("-o", "--output", choices=("text", "json"), default="text")
    t.set_defaults(func=_guard(_trace))


def add_stack_flag(p: argparse.ArgumentParser) -> None:
    """--stack: the address families of the node the policies are compiled for."""
    p.add_argument(
        "--stack", choices=[s.value for s in Stack], default=Stack.DUAL.value,
        help="the families the node runs (default dual, as the agent compiles); ipv4 or ipv6 for a "
             "single-stack node (world identities as Cilium numbers them per stack)",
    )


def _guard(fn: Any) -> Any:
    """Turn any escaping exception into one line and an exit code, never a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except CiliateError as e:
            print(f"ciliate: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except Exception as e:  # noqa: BLE001 - the user gets a line, not a traceback
            print(f"ciliate: internal error: {type(e).__name__}: {e}", file=sys.stderr)
            return EXIT_INTERNAL

    return run


def _validate(args: argparse.Namespace) -> int:
    res = load_paths(args.paths)
    if args.output == "json":
        print(
            json.dumps(
                {
                    "valid": res.ok,
                    "policies": [p.key for p in res.policies],
                    "errors": [e.to_dict() | {"message": str(e)} for e in res.errors],
                    "warnings": res.warnings,
                },
                indent=2,
            )
        )
    else:
        for w in res.warnings:
            print(f"warning: {w}", file=sys.stderr)
        for e in res.errors:
            print(str(e))
        if res.ok:
            print(f"ok: {len(res.policies)} policies valid in {len(res.files)} files")
    return EXIT_OK if res.ok else EXIT_INVALID


def _parse_dport(s: str) -> tuple[int, Protocol]:
    num, _, proto = s.partition("/")
    if not num.strip().isdigit():
        raise CiliateError(f"bad --dport {s!r}: expected N, N/TCP or N/UDP")
    port = int(num)
    if not 0 < port <= 65535:
        raise CiliateError(f"bad --dport {s!r}: port out of range 1-65535")
    p = (proto or "TCP").upper()
    if p not in ("TCP", "UDP"):
        raise CiliateError(f"bad --dport {s!r}: protocol must be TCP or UDP")
    return port, Protocol[p]


def _party(spec: str, endpoint_id: int, endpoints: list[Endpoint]) -> Party:
    kind, value = parse_party(spec)
    if kind == "labels":
        endpoints.append(Endpoint(endpoint_id, value))
        return Party.endpoint(endpoint_id)
    if kind == "ip":
        return Party.address(value)
    return Party.entity(value)


def _headers(items: list[str]) -> dict[str, tuple[str, ...]]:
    """A name given twice is a header sent on two lines, as the proxy sees it."""
    out: dict[str, tuple[str, ...]] = {}
    for h in items:
        name, _, value = h.partition(":")
        if not name.strip():
            raise CiliateError(f'bad --header {h!r}: expected "Name: value"')
        key = name.strip().lower()
        out[key] = (*out.get(key, ()), value.strip())
    return out


def _sni(name: str | None) -> str | None:
    """--sni as a client sends it: a host name, compared case-insensitively."""
    if name is None:
        return None
    if not name or name != name.strip() or "*" in name:
        raise CiliateError(f"bad --sni {name!r}: expected the host name a client sends, like api.example.com")
    return name.lower()


def _trace(args: argparse.Namespace) -> int:
    port, proto = _parse_dport(args.dport)
    endpoints: list[Endpoint] = []
    src = _party(args.src, _SRC_ID, endpoints)
    dst = _party(args.dst, _DST_ID, endpoints)
    res = load_paths(args.policies)
    if not res.ok:
        for e in res.errors:
            print(str(e), file=sys.stderr)
        print(f"ciliate: {len(res.errors)} policy error(s); fix them first (ciliate policy validate)", file=sys.stderr)
        return EXIT_BAD_INPUT
    http = None
    if args.method or args.http_path or args.host or args.header:
        http = HTTPRequest(
            method=args.method or "GET", path=args.http_path or "/", host=args.host or "", headers=_headers(args.header)
        )
    stack = Stack(args.stack)
    state = compile_state(res.policies, endpoints, stack=stack)
    result = trace(state, src, dst, port, proto, http, _sni(args.sni))
    if args.output == "json":
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _print_text(result, state.identity_labels)
        if any(p.family is not None and not stack.runs(p.family) for p in (src, dst)):
            print("hint:    --stack dual traces what the policies say on a node that runs both families")
    return EXIT_OK if result.allowed else EXIT_DENIED


def _print_text(r: TraceResult, labels: Any) -> None:
    def ident(i: int) -> str:
        ls = labels.get(i)
        return f"{i} ({', '.join(sorted(ls))})" if ls else str(i)

    print(f"verdict: {r.verdict}")
    print(f"layer:   {r.layer}")
    print(f"reason:  {r.reason}")
    print(f"src:     identity {ident(r.src_identity)}")
    print(f"dst:     identity {ident(r.dst_identity)}")
    for rule in r.rules:
        print(f"rule:    {rule}")

