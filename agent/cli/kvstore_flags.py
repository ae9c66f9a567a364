"""`ciliate agent`'s cluster flags (Cilium's names where Cilium has them) and
the shared-state adapter they build. Cluster mode is on with `--kvstore
etcd`; the node then needs its address on the underlay (`--node-ip`, found
from the route to the first etcd endpoint when omitted, or the first global
address when etcd is on this machine) and the CIDR its
pods get addresses from (`--pod-cidr`, the range of its host-local IPAM).
`--node-name` is shared with the Kubernetes flags."""

from __future__ import annotations

import argparse
import socket
from ipaddress import IPv4Address, IPv4Network, ip_address
from pathlib import Path
from urllib.parse import urlsplit


class ClusterFlagError(ValueError):
    """A cluster flag is missing or wrong; the message names it."""


def add_kvstore_flags(a: argparse.ArgumentParser) -> None:
    g = a.add_argument_group("cluster (kvstore)")
    g.add_argument("--kvstore", choices=("etcd",), default=None, help="share identities, endpoints and nodes with other agents through this store")
    g.add_argument(
        "--kvstore-opt", action="append", default=[], metavar="KEY=VALUE",
        help="store options, repeatable: etcd.endpoints=http://H:2379[,...] or etcd.config=FILE "
        "(endpoints, trusted-ca-file, cert-file, key-file as Cilium's etcd config)",
    )
    g.add_argument("--kvstore-lease-ttl", type=float, default=None, help="seconds this node's entries outlive it when it dies (default: the store module's)")
    g.add_argument("--node-ip", default=None, help="this node's address on the underlay (default: the source address towards the first etcd endpoint; with etcd on this machine, its first global address)")
    g.add_argument("--pod-cidr", default=None, help="the CIDR this node's pods get addresses from (other nodes route it to --node-ip)")


def _node_ip(endpoints: tuple[str, ...]) -> IPv4Address:
    """The address this node would use to reach the first etcd endpoint (a
    route lookup, no packet is sent); when that is loopback (etcd on this
    machine), the first global address of another interface; else an error
    asking for --node-ip."""
    from pyroute2 import IPRoute

    host = urlsplit(endpoints[0]).hostname or ""
    try:
        target = ip_address(socket.gethostbyname(host))
    except (OSError, ValueError) as exc:
        raise ClusterFlagError(f"--node-ip: not given, and the etcd endpoint {endpoints[0]} does not resolve: {exc}") from None
    with IPRoute() as ipr:
        try:
            routes = ipr.route("get", dst=str(target))
        except Exception:  # noqa: BLE001 - no route: fall through to the interface scan
            routes = []
        src = routes[0].get_attr("RTA_PREFSRC") if routes else None
        if src is not None and not ip_address(src).is_loopback:
            return IPv4Address(src)
        for a in ipr.get_addr(family=2):
            addr = IPv4Address(a.get_attr("IFA_ADDRESS"))
            if not addr.is_loopback and not addr.is_link_local and a.get("scope", 0) == 0:
                return addr
    raise ClusterFlagError(f"--node-ip: not given, and this node has no non-loopback address to reach {endpoints[0]} with; pass --node-ip")


def shared_state_from_args(args: argparse.Namespace, state_dir: Path):
    """(SharedState, node ip) for `--kvstore etcd`, or (None, None)."""
    if args.kvstore is None:
        if args.kvstore_opt or args.pod_cidr:
            raise ClusterFlagError("--kvstore-opt/--pod-cidr given without --kvstore etcd")
        return None, None
    from agent.adapters.kvstore_state import KvstoreState
    from kvstore.config import parse_kvstore_opts
    from kvstore.errors import KvstoreConfigError
    from kvstore.model import NodeInfo

    try:
        config = parse_kvstore_opts(args.kvstore_opt)
    except KvstoreConfigError as exc:
        raise ClusterFlagError(str(exc)) from None
    if args.pod_cidr is None:
        raise ClusterFlagError("--pod-cidr: required with --kvstore (the CIDR this node's pods get addresses from)")
    try:
        pod_cidr = IPv4Network(args.pod_cidr)
    except ValueError as exc:
        raise ClusterFlagError(f"--pod-cidr {args.pod_cidr!r}: {exc}") from None
    try:
        node_ip = IPv4Address(args.node_ip) if args.node_ip else _node_ip(config.endpoints)
    except ValueError as exc:
        raise ClusterFlagError(f"--node-ip {args.node_ip!r}: {exc}") from None
    if node_ip in pod_cidr:
        raise ClusterFlagError(f"--node-ip {node_ip} is inside --pod-cidr {pod_cidr}")
    node = NodeInfo(name=args.node_name or socket.gethostname(), ip=node_ip, pod_cidr=pod_cidr)
    kw = {} if args.kvstore_lease_ttl is None else {"lease_ttl": args.kvstore_lease_ttl}
    return KvstoreState(config, node, state_dir, **kw), node_ip
