"""`ciliate agent`'s cluster flags (Cilium's names where Cilium has them) and
the shared-state adapter they build. Cluster mode is on with `--kvstore
etcd`; the node then needs its address on the underlay (`--node-ip`, found
from the route to the first etcd endpoint when omitted, or the first global
address when etcd is on this machine) and the CIDR its
pods get addresses from (`--pod-cidr`, the range of its host-local IPAM).
Dual-stack nodes give `--pod-cidr` once per family and need an IPv6 address
on the underlay too (`--node-ip` once per family; found on the IPv4
address's interface when omitted): other nodes route the IPv6 pods via it.
The underlay and the first pod CIDR are IPv4: an IPv6-only cluster is not
supported yet. `--node-name` is shared with the
Kubernetes flags."""

from __future__ import annotations

import argparse
import socket
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
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
    g.add_argument(
        "--node-ip", action="append", default=[],
        help="this node's address on the underlay, once per family (IPv4 default: the source address towards the first "
        "etcd endpoint; with etcd on this machine, its first global address); an IPv6 one carries the IPv6 pods' routes",
    )
    g.add_argument(
        "--pod-cidr", action="append", default=[],
        help="the CIDR this node's pods get addresses from, once per family (other nodes route it to --node-ip)",
    )


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


def _one_per_family(flag: str, values: list[str], parse) -> dict:
    """{4: ..., 6: ...} from a repeatable flag; at most one of each family."""
    out: dict = {}
    for text in values:
        try:
            v = parse(text)
        except ValueError as exc:
            raise ClusterFlagError(f"{flag} {text!r}: {exc}") from None
        if v.version in out:
            raise ClusterFlagError(f"{flag}: given twice for IPv{v.version} ({out[v.version]} and {v}); once per family")
        out[v.version] = v
    return out


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
    cidrs = _one_per_family("--pod-cidr", args.pod_cidr, ip_network)
    if 4 not in cidrs:
        raise ClusterFlagError("--pod-cidr: an IPv4 CIDR is required with --kvstore (the CIDR this node's pods get addresses from)")
    ips = _one_per_family("--node-ip", args.node_ip, ip_address)
    node_ip = ips.get(4) or _node_ip(config.endpoints)
    pod_cidr, pod_cidr6, node_ip6 = cidrs[4], cidrs.get(6), ips.get(6)
    if pod_cidr6 is not None and node_ip6 is None:
        from redirect.node_routes import ipv6_of_device

        node_ip6 = ipv6_of_device(node_ip)
        if node_ip6 is None:
            raise ClusterFlagError(
                f"--pod-cidr {pod_cidr6}: the other nodes need an IPv6 address of this node to route it to, and the "
                f"interface holding {node_ip} has no global IPv6 address; give one with --node-ip"
            )
    for ip in (node_ip, node_ip6):
        for cidr in (pod_cidr, pod_cidr6):
            if ip is not None and cidr is not None and ip.version == cidr.version and ip in cidr:
                raise ClusterFlagError(f"--node-ip {ip} is inside --pod-cidr {cidr}")
    assert isinstance(node_ip, IPv4Address) and isinstance(pod_cidr, IPv4Network)
    assert pod_cidr6 is None or isinstance(pod_cidr6, IPv6Network)
    assert node_ip6 is None or isinstance(node_ip6, IPv6Address)
    from agent.cli.host_flags import node_labels_from_args

    try:
        labels = node_labels_from_args(args) if getattr(args, "node_label", None) else None
    except ValueError as exc:
        raise ClusterFlagError(str(exc)) from None
    # The labels published at start; in Kubernetes mode the core republishes
    # them with the Node object's (agent/core/cluster_sync.py).
    node = NodeInfo(name=args.node_name or socket.gethostname(), ip=node_ip, pod_cidr=pod_cidr, pod_cidr6=pod_cidr6, ip6=node_ip6,
                    labels=labels or None)
    kw = {} if args.kvstore_lease_ttl is None else {"lease_ttl": args.kvstore_lease_ttl}
    return KvstoreState(config, node, state_dir, **kw), node_ip
