"""The client commands that talk to the agent: status, endpoint list|get,
identity list, policy get, bpf policy get, monitor, fqdn (and `ciliate
agent` itself, from agent_daemon.py).

Every client command takes `-o json`; table output is for people, JSON for
scripts (one object per command, one object per line for `monitor`). The
client side does socket I/O through agent.api.client; see agent/cli/ciliate.py for how
subcommands are registered.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agent.api.client import AgentClient, AgentError, AgentUnavailable, default_socket
from agent.cli import agent_daemon, fqdn_commands, monitor

Rows = list[Sequence[object]]


# --- output ---------------------------------------------------------------------
def _table(headers: Sequence[str], rows: Rows) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _emit(args: argparse.Namespace, value: BaseModel, human: Callable[[Any], str]) -> int:
    if args.output == "json":
        print(value.model_dump_json(indent=2))
    else:
        print(human(value))
    return 0


def _client_command(fn: Callable[[AgentClient, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            with AgentClient(Path(args.socket)) as client:
                return fn(client, args)
        except AgentUnavailable as exc:
            print(f"ciliate: {exc}", file=sys.stderr)
            return 1
        except AgentError as exc:
            print(f"ciliate: {exc}", file=sys.stderr)
            return 1

    return run


# --- client commands ---------------------------------------------------------------
def _kvstore_line(kv: dict) -> str:
    """One line on the shared store: reachable or why not, and what this node follows."""
    state = "etcd ok" if kv.get("ok") else f"DOWN: {kv.get('detail') or 'not connected'}"
    lease = f", lease {kv['lease_id']}{' (adopted)' if kv.get('lease_adopted') else ''}" if kv.get("lease_id") else ""
    refused = f", {kv['refused_entries']} entries refused" if kv.get("refused_entries") else ""
    return (
        f"{state} (node {kv.get('node')}{lease}, {kv.get('remote_nodes', 0)} other nodes, "
        f"{kv.get('remote_endpoints', 0)} remote endpoints, {kv.get('identities', 0)} identities{refused})"
    )


def _conntrack_lines(ct) -> list[str]:
    if ct is None:
        return []
    lines = [f"Conntrack:       {ct.entries}/{ct.capacity} entries ({ct.percent:.1f} %)"]
    return lines + ([f"WARNING:         {ct.warning}"] if ct.warning else [])


def _upstream_lines(u) -> list[str]:
    if u is None:
        return []
    if not u.by_datapath:
        return [f"Upstream ports:  {u.ports}, the node's range (not assigned by the datapath: {u.detail})"]
    refused = f", {u.exhausted} refused: range exhausted" if u.exhausted else ""
    return [f"Upstream ports:  {u.ports}, assigned by the datapath ({u.assigned} connections{refused})"]


def family_lines(families: dict) -> list[str]:
    """One line per address family: whether the datapath enforces it, what
    happens to its packets if not, and how many endpoints that concerns."""
    lines = []
    for key, f in sorted(families.items()):
        name = "IPv" + key.removeprefix("ipv")
        what = "enforced" if f.enforced else "not enforced" + (f", {f.detail}" if f.detail else "")
        held = f"{f.endpoints} endpoint{'' if f.endpoints == 1 else 's'} with an {name} address"
        lines.append(f"{name + ':':<17}{what}; {held}")
    return lines


def _host_lines(h) -> list[str]:
    if h is None:
        return []
    enforced = [d for d, on in (("ingress", h.ingress_enforced), ("egress", h.egress_enforced)) if on]
    mode = ("audit: " if h.audit else "") + (" and ".join(enforced) + " enforced" if enforced else "not enforced")
    return [
        f"Host firewall:   endpoint {h.endpoint_id}, {mode}, devices {', '.join(h.devices) or '(pods only)'}, "
        f"policies {', '.join(h.policies) or 'none'}",
        f"                 always reaches {', '.join(h.always_reach) or 'nothing else'}",
    ]


def _status(client: AgentClient, args: argparse.Namespace) -> int:
    def human(s) -> str:
        eps = ", ".join(f"{n} {k}" for k, n in sorted(s.endpoints.items())) or "none"
        pols = ", ".join(f"{n} {k}" for k, n in sorted(s.policies.items())) or "none"
        proxy = ", ".join(f"{k}={v}" for k, v in s.proxy.items() if v is not None)
        return "\n".join(
            [
                f"Health:          {'ok' if s.ok else 'DEGRADED'}",
                f"Policy revision: {s.revision}",
                f"Endpoints:       {eps}",
                *family_lines(s.families),
                f"Policies:        {pols}",
                f"Proxy:           {proxy}",
                f"State dir:       {s.state_dir}",
                f"Policy dir:      {s.policy_dir or '-'}",
            ]
            + (
                [f"Kubernetes:      {s.kubernetes.get('detail')} (node {s.kubernetes.get('node')}, "
                 f"{s.kubernetes.get('policies')} policies, {s.kubernetes.get('pods')} pods"
                 + (f", {s.kubernetes['pods_ipv6']} with IPv6" if s.kubernetes.get("pods_ipv6") else "") + ")"]
                if s.kubernetes
                else []
            )
            + ([f"Cluster:         {_kvstore_line(s.kvstore)}"] if s.kvstore else [])
            + _conntrack_lines(s.conntrack)
            + _upstream_lines(s.upstream_ports)
            + _host_lines(s.host_firewall)
        )

    status = client.status()
    _emit(args, status, human)
    return 0 if status.ok else 1


def _endpoint_rows(eps) -> str:
    rows = [
        (
            e.id,
            e.name or e.container_id[:12],
            e.ipv4,
            e.ipv6,
            e.identity,
            e.state.value + (f" ({e.reason})" if e.reason else ""),
            "ingress" if e.ingress_enforced else "",
            "egress" if e.egress_enforced else "",
            "audit" if e.audited else "",
            e.policy_revision,
            ",".join(f"{k}={v}" for k, v in sorted(e.labels.items())),
        )
        for e in eps
    ]
    return _table(["ID", "NAME", "IPV4", "IPV6", "IDENTITY", "STATE", "INGRESS", "EGRESS", "AUDIT", "REV", "LABELS"], rows)


def _endpoint_list(client: AgentClient, args: argparse.Namespace) -> int:
    from agent.core.models import EndpointList

    return _emit(args, EndpointList(endpoints=client.endpoints()), lambda v: _endpoint_rows(v.endpoints))


def _endpoint_get(client: AgentClient, args: argparse.Namespace) -> int:
    def human(e) -> str:
        lines = [f"{k + ':':<18}{v}" for k, v in e.model_dump(mode="json").items() if k not in ("labels", "policies")]
        lines.append(f"{'labels:':<18}" + ", ".join(f"{k}={v}" for k, v in sorted(e.labels.items())))
        lines.append(f"{'policies:':<18}" + (", ".join(e.policies) or "-"))
        return "\n".join(lines)

    return _emit(args, client.endpoint(args.id), human)


_BOOL = {"true": True, "on": True, "enabled": True, "false": False, "off": False, "disabled": False}
# name in `endpoint config` -> EndpointConfig field
_SETTINGS = {"policy-audit-mode": "policy_audit_mode", "PolicyAuditMode": "policy_audit_mode"}


def endpoint_settings(pairs: Sequence[str]) -> dict[str, bool | None]:
    """`policy-audit-mode=true` -> {"policy_audit_mode": True}; `default` clears
    the endpoint's own setting (the agent's --policy-audit-mode applies)."""
    out: dict[str, bool | None] = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        field = _SETTINGS.get(name)
        if field is None:
            raise ValueError(f"{pair!r}: unknown setting {name!r} (known: policy-audit-mode)")
        if not eq or (value.lower() not in _BOOL and value.lower() != "default"):
            raise ValueError(f"{pair!r}: {name} takes true, false or default")
        out[field] = None if value.lower() == "default" else _BOOL[value.lower()]
    return out


def _endpoint_config(client: AgentClient, args: argparse.Namespace) -> int:
    from agent.core.models import EndpointConfig

    try:
        settings = endpoint_settings(args.settings)
    except ValueError as exc:
        print(f"ciliate endpoint config: {exc}", file=sys.stderr)
        return 2
    if not settings:
        e = client.endpoint(args.id)
        return _emit(args, e, lambda e: f"policy-audit-mode={_mode(e.policy_audit_mode)} (audited now: {str(e.audited).lower()})")
    e = client.configure_endpoint(args.id, EndpointConfig(**settings), wait=args.wait)
    return _emit(args, e, lambda e: f"endpoint {e.id}: policy-audit-mode={_mode(e.policy_audit_mode)}, audited now: {str(e.audited).lower()}")


def _mode(value: bool | None) -> str:
    return "default" if value is None else str(value).lower()


def _identity_list(client: AgentClient, args: argparse.Namespace) -> int:
    return _emit(
        args,
        client.identities(),
        lambda v: _table(
            ["ID", "LABELS", "ENDPOINTS"],
            [(i.id, ", ".join(i.labels), ",".join(map(str, i.endpoints))) for i in v.identities],
        ),
    )


def _policy_rows(pols) -> str:
    rows = []
    for p in pols:
        what = f"{p.state} on {p.endpoints} endpoint(s) at revision {p.revision}" if p.state != "error" else "error"
        if p.stale:
            what += " (previous version still enforced)"
        rows.append((p.name, p.kind, what, p.source))
        if p.reason:
            rows.append(("", "", f"  {p.reason}", ""))
        rows += [("", "", f"  {e.kind.value}: {e.message}", "") for e in p.errors]
        rows += [("", "", f"  warning: {w}", "") for w in p.warnings]
    return _table(["NAME", "KIND", "STATUS", "SOURCE"], rows)


def _policy_get(client: AgentClient, args: argparse.Namespace) -> int:
    if args.name:
        pol = client.policy(args.name)
        _emit(args, pol, lambda p: _policy_rows([p]))
        return 0 if pol.state != "error" else 1
    pols = client.policies()
    return _emit(args, pols, lambda v: f"Policy revision {v.revision}\n" + _policy_rows(v.policies))


def _bpf_policy_get(client: AgentClient, args: argparse.Namespace) -> int:
    return _emit(
        args,
        client.bpf_policy(args.id),
        lambda d: _table(
            ["DIRECTION", "IDENTITY", "LABELS", "PROTOCOL", "PORTS", "VERDICT", "PROXY PORT"],
            [(e.direction, e.identity, ", ".join(e.labels), e.protocol, e.ports, e.verdict, e.proxy_port or "") for e in d.entries],
        ),
    )


def _client_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--socket", default=str(default_socket()), help="agent API socket (env CILIATE_SOCKET)")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table", help="output format")
    return p


def _find_subparsers(parser: argparse.ArgumentParser) -> "argparse._SubParsersAction | None":
    for action in parser._actions:  # argparse offers no public way to reach them
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add this module's subcommands to the `ciliate` parser."""
    common = _client_parent()

    agent_daemon.add_parser(sub)

    s = sub.add_parser("status", parents=[common], help="agent health and counts")
    s.set_defaults(func=_client_command(_status))

    e = sub.add_parser("endpoint", help="endpoints known to the agent")
    esub = e.add_subparsers(dest="endpoint_command", metavar="SUBCOMMAND", required=True)
    el = esub.add_parser("list", parents=[common], help="list endpoints")
    el.set_defaults(func=_client_command(_endpoint_list))
    eg = esub.add_parser("get", parents=[common], help="show one endpoint")
    eg.add_argument("id", type=int)
    eg.set_defaults(func=_client_command(_endpoint_get))
    ec = esub.add_parser(
        "config", parents=[common], help="show or change an endpoint's settings",
        description="e.g. `ciliate endpoint config 12 policy-audit-mode=true`; without a setting, shows them",
    )
    ec.add_argument("id", type=int)
    ec.add_argument("settings", nargs="*", metavar="NAME=VALUE", help="policy-audit-mode=true|false|default")
    ec.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the change to be in place (0: do not wait)")
    ec.set_defaults(func=_client_command(_endpoint_config))

    i = sub.add_parser("identity", help="security identities")
    isub = i.add_subparsers(dest="identity_command", metavar="SUBCOMMAND", required=True)
    il = isub.add_parser("list", parents=[common], help="list identities and their labels")
    il.set_defaults(func=_client_command(_identity_list))

    fqdn_commands.register(sub, common, _client_command, _emit, _table)

    # `policy get` joins the policy engineer's `policy` group when it exists.
    policy_parser = sub.choices.get("policy")
    psub = _find_subparsers(policy_parser) if policy_parser is not None else None
    if psub is None:
        policy_parser = sub.add_parser("policy", help="policies")
        psub = policy_parser.add_subparsers(dest="policy_command", metavar="SUBCOMMAND")
    pg = psub.add_parser("get", parents=[common], help="policies in force and their status (from the agent)")
    pg.add_argument("name", nargs="?", help="namespace/name, or name for clusterwide; all when omitted")
    pg.set_defaults(func=_client_command(_policy_get))

    b = sub.add_parser("bpf", help="kernel state")
    bsub = b.add_subparsers(dest="bpf_command", metavar="SUBCOMMAND", required=True)
    bp = bsub.add_parser("policy", help="policy maps")
    bpsub = bp.add_subparsers(dest="bpf_policy_command", metavar="SUBCOMMAND", required=True)
    bpg = bpsub.add_parser("get", parents=[common], help="an endpoint's policy map, decoded")
    bpg.add_argument("id", type=int, metavar="EPID")
    bpg.set_defaults(func=_client_command(_bpf_policy_get))

    m = sub.add_parser("monitor", parents=[common], help="live flow events: kernel verdicts and Envoy access logs")
    monitor.add_arguments(m)
    m.set_defaults(func=_client_command(monitor.run))
