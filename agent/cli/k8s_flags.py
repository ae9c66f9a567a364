"""`ciliate agent`'s Kubernetes flags (Cilium's names) and the cluster source
they build. Kubernetes mode is on with --k8s-kubeconfig-path or
--k8s-api-server, or in a pod (KUBERNETES_SERVICE_HOST set, in-cluster
credentials); --disable-k8s turns it off. The policy directory keeps
working beside it."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path


def add_k8s_flags(a: argparse.ArgumentParser) -> None:
    g = a.add_argument_group("Kubernetes")
    g.add_argument("--k8s-kubeconfig-path", default=None, help="kubeconfig to reach the API server (default: in-cluster when in a pod)")
    g.add_argument("--k8s-api-server", default=None, help="API server URL without credentials (instead of a kubeconfig)")
    g.add_argument("--node-name", default=None, help="this node's name: whose pods and status entries are ours (default: hostname; env NODE_NAME in the DaemonSet)")
    g.add_argument("--k8s-sync-timeout", type=float, default=180.0, help="seconds to wait for the first list of every kind before giving up (default %(default)s)")
    g.add_argument("--disable-cnp-status-updates", action="store_true", help="do not write status.nodes[NODE] on CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy")
    g.add_argument("--disable-k8s", action="store_true", help="no Kubernetes even when running in a pod")


def k8s_source_from_args(args: argparse.Namespace):
    """The KubernetesSource the flags ask for, or None without Kubernetes."""
    from agent.adapters.kubernetes.client import KubeAccess
    from agent.adapters.kubernetes.source import KubernetesOptions, KubernetesSource

    if args.disable_k8s:
        return None
    access = KubeAccess(
        kubeconfig=Path(args.k8s_kubeconfig_path) if args.k8s_kubeconfig_path else None,
        api_server=args.k8s_api_server,
    )
    if not access.wanted:
        return None
    options = KubernetesOptions(
        node_name=args.node_name or socket.gethostname(),
        sync_timeout=args.k8s_sync_timeout,
        write_status=not args.disable_cnp_status_updates,
        server=access.describe(),
    )
    return KubernetesSource(access.api_client, options)
