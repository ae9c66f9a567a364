"""Kubernetes-mode fixtures: kubesim (tests/kubeapi's server), the agent core
with the real policy compiler and the fake kernel and Envoy
(tests/agent/fakes.py), and the Kubernetes source talking to kubesim through
the real `kubernetes` client, with short backoffs and timeouts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from agent.adapters.kubernetes.client import KubeAccess
from agent.adapters.kubernetes.reflector import Timing
from agent.adapters.kubernetes.source import KubernetesOptions, KubernetesSource
from agent.adapters.policy_compiler import PolicyFileLoader, make_compiler_factory
from agent.core.models import EndpointCreate
from agent.daemon import Agent, AgentConfig, build_agent
from demo.kubesim import ThreadedKubeAPIServer
from tests.agent.fakes import FakeDatapath, FakeProxy
from tests.kubeapi.conftest import CCNP, CNP, kubectl  # noqa: F401 - fixture re-used here

NODE = "node-a"
FAST = Timing(backoff_min=0.05, backoff_max=0.3, watch_timeout=30, read_timeout=2.0, connect_timeout=0.5, request_timeout=2.0)


@pytest.fixture
def kube() -> Iterator[ThreadedKubeAPIServer]:
    with ThreadedKubeAPIServer(bookmark_interval=0.2, history_limit=50) as server:
        yield server


@pytest.fixture
def api(kube: ThreadedKubeAPIServer) -> Iterator[client.ApiClient]:
    conf = client.Configuration(host=kube.url)
    conf.retries = False
    with client.ApiClient(conf) as api_client:
        yield api_client


@dataclass
class K8sRig:
    tmp: Path
    kube: ThreadedKubeAPIServer
    api: client.ApiClient
    datapath: FakeDatapath = field(default_factory=FakeDatapath)
    proxy: FakeProxy = field(default_factory=FakeProxy)
    agent: Agent | None = None
    source: KubernetesSource | None = None

    def build(self, policy_dir: Path | None = None, config: dict[str, Any] | None = None, shared: Any = None,
              **options: Any) -> Agent:
        """`config`: more AgentConfig fields (host, node_labels); `shared`: a
        SharedState (cluster mode); `options`: KubernetesOptions'."""
        opts = dict(node_name=NODE, timing=FAST, sync_timeout=5.0, status_interval=0.5, status_qps=100.0,
                    status_settle=0.05, server=self.kube.url)
        opts.update(options)
        self.source = KubernetesSource(KubeAccess(api_server=self.kube.url).api_client, KubernetesOptions(**opts))
        self.agent = build_agent(
            AgentConfig(state_dir=self.tmp / "state", policy_dir=policy_dir, metrics_port=None, settle=0.0, pod_wait=2.0,
                        **(config or {})),
            compiler_factory=make_compiler_factory(),
            loader=PolicyFileLoader(),
            datapath=self.datapath,
            proxy=self.proxy,
            cluster=self.source,
            shared=shared,
        )
        return self.agent

    # --- API objects through the real client ---------------------------------------
    @property
    def co(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def create_cnp(self, obj: dict, namespace: str = "default") -> dict:
        return self.co.create_namespaced_custom_object(*CNP[:2], namespace, CNP[2], obj)

    def get_cnp(self, name: str, namespace: str = "default") -> dict:
        return self.co.get_namespaced_custom_object(*CNP[:2], namespace, CNP[2], name)

    def pod(self, name: str, labels: dict[str, str], namespace: str = "default", node: str = NODE,
            service_account: str | None = None) -> None:
        self.core.create_namespaced_pod(namespace, client.V1Pod(
            metadata=client.V1ObjectMeta(name=name, namespace=namespace, labels=labels),
            spec=client.V1PodSpec(node_name=node, service_account_name=service_account,
                                  containers=[client.V1Container(name="c", image="busybox")])))

    def node(self, labels: dict[str, str], name: str = NODE) -> None:
        """What a kubelet registers: the Node object, with these labels."""
        self.core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name, labels=labels)))

    def namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels or {})))

    # --- the agent side --------------------------------------------------------------
    async def endpoint(self, pod: str, ip: str, namespace: str = "default", n: int = 1):
        """What ciliate-cni registers for a pod: the namespace label and ns/pod name."""
        assert self.agent is not None
        view, _ = await self.agent.create_endpoint(
            EndpointCreate(container_id=f"c-{pod}", host_ifname=f"lxc{n:03d}", ipv4=ip,
                           labels={"k8s:io.kubernetes.pod.namespace": namespace}, name=f"{namespace}/{pod}"),
            wait=5.0)
        return view

    def policy(self, name: str):
        assert self.agent is not None
        return next((p for p in self.agent.policies().policies if p.name == name), None)

    def allowed(self, dst_ep: int, src_ep: int, port: int = 80) -> bool:
        """Whether what the datapath was last given lets TCP src -> dst:port in."""
        from policy.compiled import Direction, Protocol, lookup

        assert self.agent is not None and self.agent.regenerator is not None
        realized = self.agent.regenerator.realized
        return lookup(realized[dst_ep], realized[src_ep].identity, Direction.INGRESS, Protocol.TCP, port).allowed


async def eventually(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02) -> Any:
    """Poll until check() holds. The timeout only bounds a hang: what is awaited
    is an event (a regeneration, a watch delivery), which a loaded machine
    delays."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
        except (AssertionError, KeyError, StopIteration):
            got = None
            if time.monotonic() > deadline:
                raise
        else:
            if got:
                return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {check}")
        await asyncio.sleep(interval)


@pytest.fixture
async def rig(tmp_path: Path, kube: ThreadedKubeAPIServer, api: client.ApiClient) -> AsyncIterator[K8sRig]:
    r = K8sRig(tmp_path, kube, api)
    yield r
    if r.agent is not None:
        await r.agent.stop()


def cnp(name: str, app: str, from_app: str, port: int = 80, namespace: str = "default") -> dict:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": app}},
            "ingress": [{"fromEndpoints": [{"matchLabels": {"app": from_app}}],
                         "toPorts": [{"ports": [{"port": str(port), "protocol": "TCP"}]}]}],
        },
    }
