"""`ciliate monitor`: live flow events, one line each, like `hubble observe`.

    Jun 03 10:00:01.123 default/tiefighter:43210 (class=tiefighter,org=empire) -> default/deathstar:80 (class=deathstar,org=empire) l7 DENIED PUT /v1/exhaust-port 403
    Jun 03 10:00:02.456 default/xwing:51234 (class=xwing,org=alliance) -> default/deathstar:80 (class=deathstar,org=empire) drop DROPPED policy-deny (ingress)

Each side is the pod (namespace/name) when the agent knows it, else the
address; then the identity's labels (the "k8s:" source and the namespace
label left out: the pod name says both), or the identity number. `-o json`
prints the event object instead, one per line. The filters travel to the
agent, which applies them (agent/core/flow_filter.py says why). Socket I/O
through agent.api.client.
"""

from __future__ import annotations

import argparse
import sys
import time

from agent.api.client import AgentClient
from agent.core.flow_enrich import NAMESPACE_LABEL
from agent.core.flow_filter import FLOW_TYPES, VERDICTS, verdict_name
from agent.core.models import FlowEvent


def _labels(labels: list[str]) -> str:
    shown = []
    for label in labels:
        source, _, rest = label.partition(":")
        text = rest if source == "k8s" and rest else label
        if text.partition("=")[0].rsplit(":", 1)[-1] == NAMESPACE_LABEL:
            continue
        shown.append(text)
    return ",".join(shown)


def _side(pod: str | None, ns: str | None, ip: str | None, port: int | None, labels: list[str], identity: int | None) -> str:
    who = (f"{ns}/{pod}" if ns else pod) if pod else (ip or "?")
    if port and not pod and ":" in who:
        who = f"[{who}]"  # an IPv6 address: its port stays readable, as in a URL
    where = f"{who}:{port}" if port else who
    names = _labels(labels)
    if names:
        return f"{where} ({names})"
    return f"{where} (identity {identity})" if identity else where


def format_flow(e: FlowEvent) -> str:
    when = time.strftime("%b %d %H:%M:%S", time.localtime(e.time)) + f".{int(e.time * 1000) % 1000:03d}"
    src = _side(e.src_pod, e.src_namespace, e.src_ip, e.src_port, e.src_labels, e.src_identity)
    dst = _side(e.dst_pod, e.dst_namespace, e.dst_ip, e.dst_port, e.dst_labels, e.dst_identity)
    parts = [when, src, "->", dst, e.type]
    verdict = verdict_name(e.verdict) or e.verdict
    if verdict:
        parts.append(verdict.upper())
    if e.method:
        parts.append(f"{e.method} {e.path or ''} {e.status if e.status is not None else '-'}")
    elif e.reason:
        parts.append(e.reason + (f" ({e.direction})" if e.direction and e.direction != "none" else ""))
    return " ".join(parts)


def run(client: AgentClient, args: argparse.Namespace) -> int:
    shown = 0
    stream = client.flows(
        args.type or (),
        verdicts=args.verdict or (),
        ports=args.port or (),
        from_labels=args.from_label or (),
        to_labels=args.to_label or (),
        # On stderr, so `-o json` stays pure JSON; scripts wait for this line.
        on_subscribed=lambda: print("Listening for flow events. Press Ctrl-C to quit.", file=sys.stderr, flush=True),
    )
    for event in stream:
        if args.output == "json":
            print(event.model_dump_json(exclude_none=True), flush=True)
        else:
            print(format_flow(event), flush=True)
        shown += 1
        if args.count and shown >= args.count:
            break
    return 0


def add_arguments(m: argparse.ArgumentParser) -> None:
    m.add_argument("--type", action="append", choices=FLOW_TYPES, help="only these event types (repeatable)")
    m.add_argument(
        "--verdict", action="append", type=str.lower,
        choices=sorted({*VERDICTS, "drop", "forward", "redirect", "deny"}), help="only these verdicts (repeatable)",
    )
    m.add_argument("--port", action="append", type=_port, help="only flows from or to this port (repeatable)")
    m.add_argument(
        "--from-label", action="append", metavar="KEY[=VALUE][,...]",
        help="source has these labels (k8s: prefix optional; commas: all of them; repeat: any)",
    )
    m.add_argument("--to-label", action="append", metavar="KEY[=VALUE][,...]", help="destination has these labels (as --from-label)")
    m.add_argument("-n", "--count", type=int, default=0, help="stop after this many events")


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return int(text)
