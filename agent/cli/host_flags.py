"""`ciliate agent`'s host policy flags -> HostEndpoint (or None).

`--host-firewall` (or any `--host-device`) makes the node an endpoint;
`--node-label` gives the labels nodeSelector matches (in Kubernetes mode,
added over the labels of the node's Node object: agent/core/compile_step.py). The peers the node must
always reach are the agent's own: its kvstore endpoints and its API server,
as addresses (a name is resolved once, here)."""

from __future__ import annotations

import argparse
import socket
from ipaddress import IPv4Address, IPv6Address, ip_address
from urllib.parse import urlsplit

from agent.core.ports import HostEndpoint
from policy.labels import key_problem, value_problem

_DEFAULT_PORTS = {"http": 80, "https": 443}


def node_labels_from_args(args: argparse.Namespace) -> dict[str, str]:
    """--node-label KEY=VALUE (repeatable): this node's labels."""
    return _labels(args.node_label)


def _labels(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        why = "expected KEY=VALUE" if not sep else key_problem(key) or value_problem(value)
        if why:
            raise ValueError(f"--node-label {item!r}: {why}")
        out[key] = value
    return out


def _addresses(url: str) -> list[tuple[IPv4Address | IPv6Address, int]]:
    parts = urlsplit(url if "//" in url else f"//{url}")
    if not parts.hostname:
        return []
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 443)
    try:
        return [(ip_address(parts.hostname), port)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise ValueError(f"{url}: cannot resolve {parts.hostname} to keep it reachable through host policies: {exc}") from None
    return sorted({(ip_address(i[4][0]), port) for i in infos}, key=lambda p: (p[0].version, int(p[0])))


def host_endpoint_from_args(args: argparse.Namespace) -> HostEndpoint | None:
    if not (args.host_firewall or args.host_device):
        if args.host_policy_audit_mode:
            raise ValueError("--host-policy-audit-mode needs --host-firewall (or --host-device)")
        return None
    labels = _labels(args.node_label)
    urls: list[str] = []
    if getattr(args, "k8s_api_server", None):
        urls.append(args.k8s_api_server)
    for opt in getattr(args, "kvstore_opt", None) or ():
        key, _, value = opt.partition("=")
        if key.strip() == "etcd.endpoints":
            urls += [u for u in value.split(",") if u.strip()]
    reach = tuple(dict.fromkeys(p for url in urls for p in _addresses(url.strip())))
    return HostEndpoint(labels, reach, tuple(dict.fromkeys(args.host_device)))
