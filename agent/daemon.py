"""The daemon: the agent core wired to its policy source and its REST API.

The core (agent/core/) knows neither; this is the one place that plugs the
directory watcher (agent/adapters/policy_directory.py) and the API server
(agent/api/server.py) into it, and, in Kubernetes mode, the cluster source
(agent/adapters/kubernetes/) the caller built. `ciliate agent` adds the kernel, Envoy and
policy adapters (agent/cli/agent_commands.py); tests and benchmarks pass
fakes for those and get the same daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from ipaddress import IPv4Address, IPv6Address

from agent.adapters.policy_compiler import FQDNPeerResolver, ServicePeerResolver
from agent.adapters.dns_proxy import DNSProxyConfig, dns_proxy_service, learned_names
from agent.adapters.policy_directory import DirectoryWatcher
from agent.api.server import ApiServer
from agent.core import collector
from agent.core.agent import Agent, AgentConfig
from agent.core.ports import (
    ClusterSource,
    CompilerFactory,
    DatapathControl,
    PolicyLoader,
    ProxyControl,
    ServicePeers,
)
from agent.core.cluster_ports import NodeRouting, SharedState

__all__ = ["Agent", "AgentConfig", "build_agent"]


def build_agent(
    config: AgentConfig,
    *,
    compiler_factory: CompilerFactory,
    loader: PolicyLoader,
    datapath: DatapathControl,
    proxy: ProxyControl,
    host_ips: Callable[[], Iterable[IPv4Address | IPv6Address]] | None = None,
    cluster: ClusterSource | None = None,
    shared: SharedState | None = None,
    routing: NodeRouting | None = None,
    service_peers: ServicePeers | None = None,
    dns_proxy: DNSProxyConfig | None = None,
) -> Agent:
    """An Agent that watches config.policy_dir (when set) and serves the REST
    API on config.socket and metrics on config.metrics_port once started;
    with `cluster`, policies and pod labels also come from the API server;
    with `shared` (and `routing`), the agent is one node of a kvstore cluster.
    Policies naming Kubernetes Services are resolved by `service_peers`
    (policy/services.py unless given). With `dns_proxy` the agent runs its
    DNS proxy (DNS rules, toFQDNs; needs the kernel datapath's redirect)."""
    return Agent(
        config,
        compiler_factory=compiler_factory,
        loader=loader,
        datapath=datapath,
        proxy=proxy,
        policy_source=DirectoryWatcher,
        services=(ApiServer,) + ((dns_proxy_service(dns_proxy),) if dns_proxy is not None else ()),
        host_ips=host_ips,
        cluster=cluster,
        shared=shared,
        routing=routing,
        service_peers=service_peers if service_peers is not None else ServicePeerResolver(),
        fqdn_peers=FQDNPeerResolver(),
        learned_names=learned_names(config.state_dir, dns_proxy) if dns_proxy is not None else None,
    )


SWITCH_INTERVAL = 0.001  # seconds


@contextlib.asynccontextmanager
async def daemon_runtime(agent: Agent) -> AsyncIterator[None]:
    """The process-wide settings the daemon runs the agent under, for its
    life (benchmarks measure the agent under them too): the cycle collector
    on the daemon's schedule (agent/core/collector.py) and a short GIL
    switch interval. Put back on exit."""
    saved = gc.get_threshold(), sys.getswitchinterval()
    collector.configure()
    # The loop hands work to threads (loading, compiling, kernel writes,
    # API writes) and waits on them: with two threads wanting the GIL, each
    # handoff may wait the whole switch interval (5 ms by default).
    sys.setswitchinterval(SWITCH_INTERVAL)
    task = asyncio.create_task(
        collector.full_collections(lambda: agent.queue.pending, lambda: agent.started_at > 0), name="ciliate-gc",
    )
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        gc.set_threshold(*saved[0])
        sys.setswitchinterval(saved[1])
        gc.unfreeze()


async def serve(agent: Agent) -> None:
    """The daemon's life: the agent until a signal, under daemon_runtime()."""
    async with daemon_runtime(agent):
        await agent.run_until_signalled()
