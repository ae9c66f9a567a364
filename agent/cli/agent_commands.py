"""`ciliate agent` (runs the daemon) and the client commands that talk to it:
status, endpoint list|get, identity list, policy get, bpf policy get, monitor.

Every client command takes `-o json`; table output is for people, JSON for
scripts (one object per command, one object per line for `monitor`). The
client side does socket I/O through agent.api.client; see agent/cli/ciliate.py for how
subcommands are registered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agent.api.client import AgentClient, AgentError, AgentUnavailable, default_socket
from agent.cli import log_setup, monitor
from agent.cli import fqdn_commands
from agent.cli.dns_flags import add_dns_flags, dns_proxy_from_args
from agent.cli.host_flags import add_host_flags, host_endpoint_from_args, node_labels_from_args
from agent.cli.k8s_flags import add_k8s_flags, k8s_source_from_args
from agent.cli.kvstore_flags import ClusterFlagError, add_kvstore_flags, shared_state_from_args
from xds.limits import ProxyLimits

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


# --- the daemon -------------------------------------------------------------------
def _host_ips() -> list:
    """The node's addresses for the `host` identity, both families (which ones: agent/core/addresses.py)."""
    from ipaddress import ip_address

    from pyroute2 import IPRoute

    from agent.core.addresses import host_addresses

    with IPRoute() as ipr:
        # AF_INET and AF_INET6; an IPv6 IFA_ADDRESS carries no zone, so ip_address takes it as is.
        found = [ip_address(a.get_attr("IFA_ADDRESS")) for family in (2, 10) for a in ipr.get_addr(family=family)]
    return host_addresses(found)


def _run_agent(args: argparse.Namespace) -> int:
    from agent.adapters.kernel_datapath import KernelDatapath, node_has_ipv6
    from agent.adapters.policy_compiler import PolicyFileLoader, make_compiler_factory
    from agent.adapters.envoy_proxy import XdsProxy
    from agent.daemon import AgentConfig, build_agent, serve
    from policy.compiled import PROXY_PORT_MAX, PROXY_PORT_MIN
    from redirect.layout import MARK_MAGIC_PROXY_ORIGIN
    from redirect.upstream_ports import POD_DEFAULT_RANGE, PortRange
    from xds.render import RenderParams

    PROXY_PORTS = PortRange(PROXY_PORT_MIN, PROXY_PORT_MAX)

    log_setup.configure(args.log_level, args.log_format, debug=args.debug)
    # Everything the agent (and the Envoy it starts) creates is root's alone:
    # endpoint records, generated headers, logs, sockets. Set before any of
    # them exists, so no file is ever briefly readable by others.
    os.umask(0o077)
    state_dir = Path(args.state_dir)
    config = AgentConfig(
        state_dir=state_dir,
        socket_path=Path(args.socket) if args.socket else None,
        policy_dir=Path(args.policy_dir) if args.policy_dir else None,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        ack_timeout=args.ack_timeout,
        policy_audit_mode=args.policy_audit_mode,
    )
    # Flags first: a wrong one is reported before anything is touched.
    try:
        shared, node_ip = shared_state_from_args(args, state_dir)
    except ClusterFlagError as exc:
        print(f"ciliate agent: {exc}", file=sys.stderr)
        return 2
    try:
        host = host_endpoint_from_args(args)
        node_labels = node_labels_from_args(args)
        dns_proxy = dns_proxy_from_args(args)
    except ValueError as exc:
        print(f"ciliate agent: {exc}", file=sys.stderr)
        return 2
    config = replace(config, host=host, host_policy_audit_mode=args.host_policy_audit_mode, node_labels=node_labels)
    if args.proxy_max_heap_mb <= 0:
        print(f"ciliate agent: --proxy-max-heap-mb must be positive, not {args.proxy_max_heap_mb}", file=sys.stderr)
        return 2
    try:
        limits = ProxyLimits(
            connections_per_listener=args.proxy_max_connections_per_listener,
            connections_total=args.proxy_max_connections,
            heap_bytes=args.proxy_max_heap_mb << 20,
        )
    except ValueError as exc:
        text = str(exc)
        for field, flag in _LIMIT_FLAGS.items():
            text = text.replace(f"proxy limit {field}", flag).replace(f"({field}", f"({flag}").replace(f" {field} (", f" {flag} (")
        print(f"ciliate agent: {text}", file=sys.stderr)
        return 2
    try:
        upstream_ports = PortRange.parse(args.proxy_upstream_ports)
    except ValueError as exc:
        print(f"ciliate agent: --proxy-upstream-ports {exc}", file=sys.stderr)
        return 2
    if upstream_ports.overlaps(PROXY_PORTS):
        print(f"ciliate agent: --proxy-upstream-ports {upstream_ports} overlaps the proxy's listener ports {PROXY_PORTS}",
              file=sys.stderr)
        return 2
    if upstream_ports.overlaps(POD_DEFAULT_RANGE):
        logging.getLogger("agent").warning(
            "--proxy-upstream-ports %s overlaps the pods' default ephemeral ports %s: an upstream can collide with "
            "a connection the pod opens itself", upstream_ports, POD_DEFAULT_RANGE,
        )
    try:
        datapath = KernelDatapath(
            Path(args.bpf_dir), state_dir / "endpoints", upstream_ports=upstream_ports,
            cgroup_root=Path(args.cgroup_root) if args.cgroup_root else None,
            host_devices=tuple(dict.fromkeys(args.host_device)),
        )
    except Exception as exc:  # e.g. no bpffs, no bcc: say so in one line
        print(f"ciliate agent: cannot open the kernel datapath in {args.bpf_dir}: {exc}", file=sys.stderr)
        return 1
    routing = None
    if shared is not None:
        from agent.adapters.node_routing import DirectRouting

        routing = DirectRouting(datapath, node_ip)
    # Envoy listens on [::] beside 0.0.0.0 only where the node has IPv6.
    params = RenderParams(upstream_mark=MARK_MAGIC_PROXY_ORIGIN, listen_address6="::" if node_has_ipv6(None) else None)
    proxy = XdsProxy(state_dir, spawn_envoy=not args.external_envoy, limits=limits, render_params=params)
    agent = build_agent(
        config, compiler_factory=make_compiler_factory(), loader=PolicyFileLoader(), datapath=datapath, proxy=proxy, host_ips=_host_ips,
        cluster=k8s_source_from_args(args), shared=shared, routing=routing, dns_proxy=dns_proxy,
    )
    try:
        asyncio.run(serve(agent))
    except Exception as exc:  # startup failures: one line a person can act on
        logging.getLogger("agent").debug("agent failed", exc_info=True)
        print(f"ciliate agent: {exc}", file=sys.stderr)
        return 1
    return 0


_LIMIT_FLAGS = {
    "connections_per_listener": "--proxy-max-connections-per-listener",
    "connections_total": "--proxy-max-connections",
    "heap_bytes": "--proxy-max-heap-mb",
}


# --- registration -------------------------------------------------------------------
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

    a = sub.add_parser("agent", help="run the agent daemon")
    a.add_argument("--state-dir", default="/var/run/ciliate", help="state, sockets and allocator files (default %(default)s)")
    a.add_argument("--socket", default=None, help="API socket (default STATE_DIR/agent.sock)")
    a.add_argument("--policy-dir", default=None, help="directory of policy files to watch")
    a.add_argument("--bpf-dir", default="/sys/fs/bpf/tc/globals", help="bpffs directory for pinned maps")
    a.add_argument("--metrics-port", type=int, default=9962, help="Prometheus metrics on 127.0.0.1 (-1: off)")
    a.add_argument("--ack-timeout", type=float, default=5.0, help="seconds to wait for Envoy's ACK")
    a.add_argument(
        "--external-envoy", action="store_true",
        help="do not spawn Envoy; one started elsewhere (e.g. the compose sidecar) connects to STATE_DIR/xds.sock",
    )
    a.add_argument(
        "--policy-audit-mode", action="store_true",
        help="audit instead of enforcing: what policy would drop passes and is reported as AUDIT "
        "(endpoints can override it: ciliate endpoint config ID policy-audit-mode=false)",
    )
    defaults = ProxyLimits()
    a.add_argument(
        "--proxy-max-connections-per-listener", type=int, default=defaults.connections_per_listener, metavar="N",
        help="connections one proxy port may hold: one pod's egress, or one server's ingress (default %(default)s)",
    )
    a.add_argument(
        "--proxy-max-connections", type=int, default=defaults.connections_total, metavar="N",
        help="downstream connections the sidecar Envoy may hold in all (default %(default)s)",
    )
    a.add_argument(
        "--proxy-max-heap-mb", type=int, default=defaults.heap_bytes >> 20, metavar="MIB",
        help="the sidecar Envoy's heap limit; under pressure it sheds load (default %(default)s)",
    )
    a.add_argument(
        "--proxy-upstream-ports", default="61000-65535", metavar="LO-HI",
        help="source ports of the proxy's upstream connections that keep the client pod's address, assigned by the "
        "datapath whatever the node's ip_local_port_range; keep them outside the pods' own range (Linux's default "
        "32768-60999) (default %(default)s)",
    )
    a.add_argument(
        "--cgroup-root", default=None, metavar="DIR",
        help="cgroup v2 mount whose root the upstream-port program attaches to (default: the one mounted, "
        "else a new mount at /run/ciliate/cgroupv2)",
    )
    a.add_argument("--log-level", default="info", choices=log_setup.LEVELS, help="default %(default)s: state changes, errors, one line per policy change")
    a.add_argument("--debug", action="store_true", help="log everything, including every API request and every call to Envoy's admin API")
    a.add_argument("--log-format", default="text", choices=log_setup.FORMATS, help="text (default) or one JSON object per line")
    add_host_flags(a)
    add_dns_flags(a)
    add_k8s_flags(a)
    add_kvstore_flags(a)
    a.set_defaults(func=_run_agent)

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
