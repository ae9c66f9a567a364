"""What node B (and the single-node baseline) runs itself: 22 policies that
select the simulated cluster's labels, so remote identities cost selector
and policy work as in production, 20 local pods those policies select, and
the local pod add -> own ipcache measurement."""

from __future__ import annotations

import asyncio
import random
import time
from ipaddress import IPv4Network
from pathlib import Path

from agent.core.models import EndpointCreate
from agent.daemon import Agent
from bench.cluster.probes import IpcacheProbe
from policy.endpoint import NAMESPACE_LABEL

POLICY_NAMESPACES = 10  # ns0..ns9 carry policies; B runs app0 and app2 in each
ADD_TIMEOUT = 60.0


def _policy(kind: str, name: str, ns: str | None, spec: str) -> str:
    meta = f"{{name: {name}, namespace: {ns}}}" if ns else f"{{name: {name}}}"
    return f"apiVersion: cilium.io/v2\nkind: {kind}\nmetadata: {meta}\nspec:\n{spec}"


def write_policies(d: Path) -> int:
    d.mkdir(parents=True)
    docs = {}
    for k in range(POLICY_NAMESPACES):
        docs[f"l3l4-ns{k}"] = _policy("CiliumNetworkPolicy", "app0-from-app1", f"ns{k}", (
            "  endpointSelector: {matchLabels: {app: app0}}\n"
            "  ingress:\n  - fromEndpoints: [{matchLabels: {app: app1}}]\n"
            '    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]\n'))
        docs[f"nswide-ns{k}"] = _policy("CiliumNetworkPolicy", "app2-from-namespace", f"ns{k}", (
            "  endpointSelector: {matchLabels: {app: app2}}\n"
            "  ingress:\n  - fromEndpoints: [{}]\n"
            '    toPorts: [{ports: [{port: "9090", protocol: TCP}]}]\n'))
    docs["l7-ns0"] = _policy("CiliumNetworkPolicy", "app0-l7-from-app3", "ns0", (
        "  endpointSelector: {matchLabels: {app: app0}}\n"
        "  ingress:\n  - fromEndpoints: [{matchLabels: {app: app3}}]\n"
        '    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: "/v1/.*"}]}}]\n'))
    docs["ccnp-db"] = _policy("CiliumClusterwideNetworkPolicy", "app2-from-app4-app5", None, (
        "  endpointSelector: {matchLabels: {app: app2}}\n"
        "  ingress:\n  - fromEndpoints: [{matchExpressions: [{key: app, operator: In, values: [app4, app5]}]}]\n"
        '    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]\n'))
    for name, text in docs.items():
        (d / f"{name}.yaml").write_text(text)
    return len(docs)


def local_pods(cidr: IPv4Network) -> list[EndpointCreate]:
    out = []
    for k in range(POLICY_NAMESPACES):
        for app in ("app0", "app2"):
            n = len(out)
            out.append(EndpointCreate(
                container_id=f"local-{n}", host_ifname=f"lxcl{n}", ipv4=cidr.network_address + 2 + n,
                labels={"app": app, NAMESPACE_LABEL: f"ns{k}"}, name=f"ns{k}/{app}-{n}",
            ))
    return out


async def local_add_latencies(agent: Agent, probe: IpcacheProbe, cidr: IPv4Network, count: int) -> list[float]:
    """Agent.create_endpoint (the CNI path) -> own compiled ipcache has the /32; an existing label set."""
    rng, out = random.Random(7), []
    for k in range(count):
        ip = cidr.network_address + 100 + k
        fut = probe.wait_for([IPv4Network(f"{ip}/32")])
        t0 = time.monotonic()
        await agent.create_endpoint(
            EndpointCreate(container_id=f"add-{k}", host_ifname=f"lxca{k}", ipv4=ip, labels={"app": "app0", NAMESPACE_LABEL: "ns0"}),
            None,
        )
        out.append(await asyncio.wait_for(fut, ADD_TIMEOUT) - t0)
        await asyncio.sleep(rng.uniform(0, 0.02))
    return out
