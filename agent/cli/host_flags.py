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
from policy.labels import label_items

_DEFAULT_PORTS = {"http": 80, "https": 443}


def add_host_flags(a: argparse.ArgumentParser) -> None:
    """`ciliate agent`'s flags for the node itself: host policies and its labels."""
    h = a.add_argument_group("nodes: host policies (CiliumClusterwideNetworkPolicy with nodeSelector), fromNodes/toNodes")
    h.add_argument(
        "--host-firewall", action="store_true",
        help="make the node an endpoint whose policy is the host policies selecting its labels; enforced for "
        "traffic between pods and the node, and on every --host-device",
    )
    h.add_argument(
        "--host-device", action="append", default=[], metavar="DEV",
        help="a device of the node where its host policies are enforced (repeat for more; implies --host-firewall)",
    )
    h.add_argument(
        "--node-label", action="append", default=[], metavar="KEY=VALUE",
        help="a label of this node, which nodeSelector and fromNodes/toNodes match; published to the other nodes "
        "in cluster mode (repeat for more). In Kubernetes mode the node's labels are its Node object's, followed "
        "as they change, and each --node-label is added over them (it wins over the Node's label of the same key)",
    )
    h.add_argument(
        "--host-policy-audit-mode", action="store_true",
        help="audit the node's policy instead of enforcing it (recommended first: what it would drop passes and "
        "is reported as AUDIT)",
    )



def node_labels_from_args(args: argparse.Namespace) -> dict[str, str]:
    """--node-label KEY=VALUE (repeatable): this node's labels."""
    return label_items(args.node_label, "--node-label")


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
    labels = label_items(args.node_label, "--node-label")
    urls: list[str] = []
    if getattr(args, "k8s_api_server", None):
        urls.append(args.k8s_api_server)
    for opt in getattr(args, "kvstore_opt", None) or ():
        key, _, value = opt.partition("=")
        if key.strip() == "etcd.endpoints":
            urls += [u for u in value.split(",") if u.strip()]
    reach = tuple(dict.fromkeys(p for url in urls for p in _addresses(url.strip())))
    return HostEndpoint(labels, reach, tuple(dict.fromkeys(args.host_device)))
