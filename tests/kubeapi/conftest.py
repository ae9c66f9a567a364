"""Fixtures: a kubesim server per test, the real `kubernetes` client bound to
it, a `kubectl` runner with its own kubeconfig, and a watch collector."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch

from demo.kubesim import ThreadedKubeAPIServer

CNP = ("cilium.io", "v2", "ciliumnetworkpolicies")
CCNP = ("cilium.io", "v2", "ciliumclusterwidenetworkpolicies")


@pytest.fixture
def kube() -> Iterator[ThreadedKubeAPIServer]:
    with ThreadedKubeAPIServer(bookmark_interval=0.2, history_limit=50) as server:
        yield server
    assert not any(t.name == "kubesim" and t.is_alive() for t in threading.enumerate())


@pytest.fixture
def api(kube: ThreadedKubeAPIServer) -> Iterator[client.ApiClient]:
    conf = client.Configuration(host=kube.url)
    conf.retries = False  # a refused connection must show at once, not after urllib3's retries
    with client.ApiClient(conf) as api_client:
        yield api_client


def cnp(name: str, namespace: str = "default", labels: dict[str, str] | None = None, port: str = "80") -> dict:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": name}},
            "ingress": [{"toPorts": [{"ports": [{"port": port, "protocol": "TCP"}]}]}],
        },
    }


def pod(name: str, node: str, labels: dict[str, str] | None = None, namespace: str = "default") -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, namespace=namespace, labels=labels or {}),
        spec=client.V1PodSpec(node_name=node, containers=[client.V1Container(name="c", image="busybox")]),
    )


@dataclass
class Collector:
    """A `kubernetes.watch.Watch` read on a thread; events land in a queue."""

    stream_fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    events: queue.Queue = field(default_factory=queue.Queue)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.watch = watch.Watch()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for ev in self.watch.stream(self.stream_fn, *self.args, **self.kwargs):
                self.events.put(ev)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            self.error = e
        finally:
            self.events.put(None)

    def next(self, timeout: float = 5.0, skip_bookmarks: bool = True) -> dict | None:
        while True:
            ev = self.events.get(timeout=timeout)
            if ev is None or not (skip_bookmarks and ev["type"] == "BOOKMARK"):
                return ev

    def join(self, timeout: float = 5.0) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the watch did not end"


@pytest.fixture
def collectors(kube: ThreadedKubeAPIServer) -> Iterator[Callable[..., Collector]]:
    made: list[Collector] = []

    def start(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Collector:
        kwargs.setdefault("_request_timeout", 10)
        c = Collector(fn, args, kwargs)
        made.append(c)
        return c

    yield start
    for c in made:
        c.watch.stop()
    if kube.server.running:
        kube.drop_watches()
    for c in made:
        c.join()


def kubectl_binary() -> str | None:
    return os.environ.get("KUBECTL") or shutil.which("kubectl")


@pytest.fixture
def kubectl(kube: ThreadedKubeAPIServer, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    binary = kubectl_binary()
    if binary is None:
        pytest.skip("kubectl is not installed (scripts/install.sh installs Debian's kubernetes-client)")
    config = tmp_path / "kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: sim\n  cluster: {{server: '{kube.url}'}}\n"
        "users:\n- name: tester\n  user: {}\n"
        "contexts:\n- name: sim\n  context: {cluster: sim, user: tester}\n"
        "current-context: sim\n"
    )
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "KUBECONFIG": str(config)}

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([binary, "--cache-dir", str(tmp_path / "cache"), *args],
                              env=env, capture_output=True, text=True, timeout=30)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    return run
