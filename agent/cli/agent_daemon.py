"""`ciliate agent`: the daemon's command-line flags, and the daemon built from
them (kernel datapath, Envoy, policy sources, cluster state) and run until
a signal. The agent's client commands are agent_commands.py's."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

from agent.cli import log_setup
from agent.cli.dns_flags import add_dns_flags, dns_proxy_from_args
from agent.cli.host_flags import add_host_flags, host_endpoint_from_args, node_labels_from_args
from agent.cli.k8s_flags import add_k8s_flags, k8s_source_from_args
from agent.cli.kvstore_flags import ClusterFlagError, add_kvstore_flags, shared_state_from_args
from xds.limits import ProxyLimits


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add `ciliate agent` and its flags."""
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


def _run_agent(args: argparse.Namespace) -> int:
    from agent.adapters.kernel_datapath import KernelDatapath, node_has_ipv6
    from agent.adapters.node_addresses import read_host_ips
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
        config, compiler_factory=make_compiler_factory(), loader=PolicyFileLoader(), datapath=datapath, proxy=proxy, host_ips=read_host_ips,
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
