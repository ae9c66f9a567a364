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

from agent.cli.parse_cache import load_policies
from policy.compiled import Protocol
from policy.compiler import compile_state
from policy.endpoint import Endpoint, NamedPort
from policy.errors import CiliateError, TraceInputError
from policy.families import Stack
from policy.icmp_types import icmp_type
from policy.labels import label_items
from policy.named_ports import port_name_problem
from policy.dns_names import canonical
from policy.fqdn_resolve import names_from_flags
from policy.fqdn_resolve import resolve_all as resolve_fqdns_all
from policy.services import resolve_all
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

    from agent.cli import policy_suggest, policy_tests

    policy_tests.add_parser(psub)
    policy_suggest.add_parser(psub)
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
    t.add_argument(
        "--dport", required=True, metavar="PORT[/PROTO]",
        help="N or a port name, /TCP (default), /UDP or /SCTP; or an ICMP type (number or name) /ICMP or /ICMPv6",
    )
    t.add_argument(
        "--node-label", action="append", default=[], metavar="KEY=VALUE",
        help="a label of the node (host policies' nodeSelector); entity:host is then the node as an endpoint",
    )
    t.add_argument(
        "--named-port", action="append", default=[], metavar="NAME=N[/PROTO]",
        help="a port the destination endpoint serves by name (its container port); repeat for more",
    )
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
    t.add_argument(
        "--dns-name", metavar="NAME",
        help="the flow is a DNS query for NAME (judged by DNS rules where it is redirected to the DNS proxy)",
    )
    t.add_argument(
        "--resolve", action="append", default=[], metavar="NAME=ADDR[,ADDR]",
        help="what NAME resolves to, as the DNS proxy would have learned it (toFQDNs); repeat for more names; "
             "--dst fqdn:NAME then means its first address",
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
    res = load_policies(args.paths)
    # Valid, but `toServices` has no Services to stand for outside the agent's
    # Kubernetes mode: say so rather than let it silently allow nothing.
    _, notes = resolve_all(res.policies, None)
    if args.output == "json":
        print(
            json.dumps(
                {
                    "valid": res.ok,
                    "policies": [p.key for p in res.policies],
                    "errors": [e.to_dict() | {"message": str(e)} for e in res.errors],
                    "warnings": res.warnings,
                    "notes": notes,
                },
                indent=2,
            )
        )
    else:
        for w in res.warnings:
            print(f"warning: {w}", file=sys.stderr)
        for e in res.errors:
            print(str(e))
        for n in notes:
            print(f"note: {n}", file=sys.stderr)
        if res.ok:
            print(f"ok: {len(res.policies)} policies valid in {len(res.files)} files")
    return EXIT_OK if res.ok else EXIT_INVALID


_PROTOCOLS = {"TCP": Protocol.TCP, "UDP": Protocol.UDP, "SCTP": Protocol.SCTP, "ICMP": Protocol.ICMP, "ICMPV6": Protocol.ICMPV6}


def _parse_dport(s: str, named: list[NamedPort]) -> tuple[int, Protocol]:
    """--dport: a port (number or one of the destination's names) and its
    protocol, or an ICMP/ICMPv6 message type (number or Cilium's name)."""
    value, _, proto = s.partition("/")
    value, p = value.strip(), (proto or "TCP").strip().upper()
    if p not in _PROTOCOLS:
        raise CiliateError(f"bad --dport {s!r}: protocol must be TCP, UDP, SCTP, ICMP or ICMPv6")
    if p in ("ICMP", "ICMPV6"):
        family = "IPv6" if p == "ICMPV6" else "IPv4"
        number, problem = icmp_type(family, value)
        if problem is not None:
            raise CiliateError(f"bad --dport {s!r}: {problem}")
        return number, _PROTOCOLS[p]
    if not value.isdigit():
        port = next((n.port for n in named if n.name == value.lower() and n.protocol == _PROTOCOLS[p]), None)
        if port is None:
            raise CiliateError(f"bad --dport {s!r}: the destination serves no {p} port named {value!r} (give --named-port {value}=N/{p})")
        return port, _PROTOCOLS[p]
    port = int(value)
    if not 0 < port <= 65535:
        raise CiliateError(f"bad --dport {s!r}: port out of range 1-65535")
    return port, _PROTOCOLS[p]


def node_labels(items: list[str]) -> dict[str, str]:
    """--node-label KEY=VALUE items (trace, diff)."""
    try:
        return label_items(items, "--node-label")
    except ValueError as exc:
        raise CiliateError(str(exc)) from None


def _parse_named_ports(items: list[str]) -> list[NamedPort]:
    out: list[NamedPort] = []
    for item in items:
        name, _, rest = item.partition("=")
        num, _, proto = rest.partition("/")
        p = (proto or "TCP").strip().upper()
        problem = port_name_problem(name.strip())
        if problem is not None or not num.strip().isdigit() or not 0 < int(num) <= 65535 or p not in ("TCP", "UDP", "SCTP"):
            why = problem or "expected NAME=N, NAME=N/TCP, /UDP or /SCTP with N in 1-65535"
            raise CiliateError(f"bad --named-port {item!r}: {why}")
        out.append(NamedPort(name.strip().lower(), int(_PROTOCOLS[p]), int(num)))
    return out


def _party(spec: str, endpoint_id: int, endpoints: list[Endpoint], named: list[NamedPort] | None = None) -> Party:
    kind, value = parse_party(spec)
    if kind == "labels":
        endpoints.append(Endpoint(endpoint_id, value, named_ports=tuple(named or ())))
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
    named = _parse_named_ports(args.named_port)
    port, proto = _parse_dport(args.dport, named)
    endpoints: list[Endpoint] = []
    try:
        names = names_from_flags(args.resolve)
    except ValueError as e:
        raise TraceInputError(str(e)) from None
    src = _party(args.src, _SRC_ID, endpoints)
    dst_spec = args.dst
    if dst_spec.startswith("fqdn:"):
        wanted = canonical(dst_spec[5:])
        if not names.get(wanted):
            raise TraceInputError(f"--dst {dst_spec}: give its addresses with --resolve {dst_spec[5:]}=ADDR")
        dst_spec = f"ip:{sorted(names[wanted], key=lambda a: (a.version, a))[0]}"
    dst = _party(dst_spec, _DST_ID, endpoints, named)
    res = load_policies(args.policies)
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
    # No Service source here: a toServices peer selects nothing (notes say so).
    policies, notes = resolve_all(res.policies, None)
    # toFQDNs: what --resolve says the names resolved to (nothing otherwise).
    policies, fqdn_notes = resolve_fqdns_all(policies, names)
    notes += fqdn_notes
    # The node is an endpoint when a host policy could select it.
    host = any(s.node_subject is not None for p in policies for s in p.specs) or bool(args.node_label)
    state = compile_state(policies, endpoints, stack=stack, host_labels=node_labels(args.node_label) if host else None)
    result = trace(state, src, dst, port, proto, http, _sni(args.sni), args.dns_name)
    if args.output == "json":
        print(json.dumps(result.to_dict() | {"notes": notes}, indent=2))
    else:
        _print_text(result, state.identity_labels)
        for n in notes:
            print(f"note:    {n}")
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

