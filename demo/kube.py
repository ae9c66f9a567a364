"""The API server side of `ciliate demo --k8s` (and of the Kubernetes
end-to-end test and benchmark): kubesim, the simulated API server
(demo/kubesim/), serving inside the node's host network namespace, a
kubeconfig for it, `kubectl` entered into that namespace, Pod
objects for the demo's pods, and waits on what the agent writes back.

Why inside the host namespace: the agent runs there (demo/node.py) and
reaches the API server on its loopback, as an agent on a real node reaches
a local API server. kubesim listens from its own event-loop thread; that
thread is started from a worker thread that first joined the namespace
(setns), and Linux gives a new thread its creator's namespaces, so the
listening socket lives there too. Every HTTP call this module makes runs on
that worker thread as well. With `netns=None` all of it stays in the
caller's namespace (tests without root).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from demo.kubesim import RequestRecord, ThreadedKubeAPIServer

CLONE_NEWNET = 0x40000000
CNP_PATH = "/apis/cilium.io/v2/namespaces/{ns}/ciliumnetworkpolicies"
SERVICE_PATH = "/api/v1/namespaces/{ns}/services"
SLICE_PATH = "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"


class KubeError(RuntimeError):
    """kubectl or the API server refused a step; the message says which."""


def _enter_netns(path: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    with open(path) as f:
        if libc.setns(f.fileno(), CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {path}: {os.strerror(err)}")


def kubectl_binary() -> str:
    """KUBECTL overrides the binary on PATH (as in tests/kubeapi)."""
    found = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not found:
        raise KubeError("kubectl is not installed (scripts/install.sh installs Debian's kubernetes-client), or set KUBECTL")
    return found


class KubeCluster:
    """Context manager; see the module docstring."""

    def __init__(self, workdir: Path, node_name: str, netns: Path | None = None, **server_options: Any) -> None:
        self.workdir = workdir
        self.node_name = node_name
        self.netns = netns
        self.kubeconfig = workdir / "kubeconfig"
        self._server_options = {"bookmark_interval": 1.0, **server_options}
        self._worker: ThreadPoolExecutor | None = None
        self.server: ThreadedKubeAPIServer | None = None
        # No proxy from the environment: the API server is on this namespace's loopback.
        self._http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def __enter__(self) -> KubeCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        init = (lambda: _enter_netns(self.netns)) if self.netns else None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kube-netns", initializer=init)
        try:
            self.server = self._worker.submit(self._start_server).result(timeout=30)
            self.kubeconfig.write_text(
                "apiVersion: v1\nkind: Config\n"
                f"clusters:\n- name: ciliate-demo\n  cluster: {{server: '{self.url}'}}\n"
                "users:\n- name: demo\n  user: {}\n"
                "contexts:\n- name: ciliate-demo\n  context: {cluster: ciliate-demo, user: demo}\n"
                "current-context: ciliate-demo\n"
            )
            # The node the agent runs as, as a kubelet registers it: the
            # agent takes its labels (nodeSelector, fromNodes) from it.
            self.http("POST", "/api/v1/nodes", {
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.node_name, "labels": {"kubernetes.io/hostname": self.node_name}},
            })
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start_server(self) -> ThreadedKubeAPIServer:
        server = ThreadedKubeAPIServer(**self._server_options)  # its loop thread inherits this thread's netns
        server.start()
        return server

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None

    @property
    def url(self) -> str:
        assert self.server is not None, "the API server is not running"
        return self.server.url

    def request_log(self) -> list[RequestRecord]:
        assert self.server is not None
        return self.server.request_log()

    # -- clients -------------------------------------------------------------------

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        """kubectl against kubesim, inside the namespace; a bare environment
        so no proxy variable or user kubeconfig steers it elsewhere."""
        enter = ["nsenter", f"--net={self.netns}"] if self.netns else []
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir), "KUBECONFIG": str(self.kubeconfig)}
        argv = [*enter, kubectl_binary(), "--cache-dir", str(self.workdir / "cache"), *args]
        proc = subprocess.run(argv, input=stdin, env=env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise KubeError(f"kubectl {' '.join(args)}: exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()}")
        return proc

    def http(self, method: str, path: str, body: dict | None = None) -> dict | None:
        """One API call over HTTP from inside the namespace; None for 404."""
        assert self._worker is not None
        return self._worker.submit(self._http_call, method, path, body).result(timeout=60)

    def _http_call(self, method: str, path: str, body: dict | None) -> dict | None:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with self._http.open(req, timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise KubeError(f"{method} {path}: {exc.code} {exc.read().decode(errors='replace')[:300]}") from None

    # -- objects ---------------------------------------------------------------------

    def create_pod(self, name: str, labels: dict[str, str], namespace: str = "default",
                   ports: list[dict] | None = None) -> dict:
        """The Pod object the agent reads the pod's labels (and named container
        ports: [{name, containerPort, protocol}]) from, scheduled on this node."""
        container: dict = {"name": name, "image": "ciliate/demo-apps"}
        if ports:
            container["ports"] = ports
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
            "spec": {"nodeName": self.node_name, "containers": [container]},
        }
        out = self.http("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
        assert out is not None
        return out

    def put(self, collection: str, obj: dict) -> dict:
        """Create the object in `collection` (an API path), or replace the one
        of that name at its current resourceVersion, as a controller writes."""
        name = obj["metadata"]["name"]
        current = self.http("GET", f"{collection}/{name}")
        if current is None:
            out = self.http("POST", collection, obj)
        else:
            body = {**obj, "metadata": {**obj["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}}
            out = self.http("PUT", f"{collection}/{name}", body)
        assert out is not None
        return out

    def put_service(self, name: str, selector: dict[str, str] | None = None, port: int = 80,
                    namespace: str = "default") -> dict:
        """A Service on TCP `port`; without `selector` a selectorless one,
        whose backends are whatever its EndpointSlices list."""
        spec: dict = {"ports": [{"port": port, "protocol": "TCP"}]}
        if selector:
            spec["selector"] = dict(selector)
        return self.put(SERVICE_PATH.format(ns=namespace), {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace}, "spec": spec})

    def put_endpoint_slice(self, name: str, service: str, addresses: dict[str, bool], port: int = 80,
                           namespace: str = "default") -> dict:
        """An IPv4 EndpointSlice of `service`: {address: ready} (as the
        endpoint-slice controller, or whoever manages a selectorless Service,
        writes it)."""
        return self.put(SLICE_PATH.format(ns=namespace), {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": namespace, "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [a], "conditions": {"ready": ready}} for a, ready in addresses.items()],
            "ports": [{"port": port, "protocol": "TCP"}],
        })

    def delete(self, collection: str, name: str) -> None:
        self.http("DELETE", f"{collection}/{name}")

    def get_cnp(self, name: str, namespace: str = "default") -> dict | None:
        return self.http("GET", f"{CNP_PATH.format(ns=namespace)}/{name}")

    def node_status(self, obj: dict) -> dict:
        """This node's `status.nodes[<node>]` entry of a policy object ({} when none)."""
        return ((obj.get("status") or {}).get("nodes") or {}).get(self.node_name) or {}

    def wait_enforcing(self, name: str, after_revision: int, namespace: str = "default", timeout: float = 30.0) -> dict:
        """Until the CiliumNetworkPolicy's entry for this node says enforcing,
        about the object's current generation, at a policy revision newer
        than `after_revision` (the agent's revision before the change).
        Returns the entry; raises KubeError with the last entry seen."""
        deadline = time.monotonic() + timeout
        entry: dict = {}
        while time.monotonic() < deadline:
            obj = self.get_cnp(name, namespace)
            if obj is not None:
                entry = self.node_status(obj)
                if entry.get("ok") is False:
                    raise KubeError(f"{namespace}/{name} refused on {self.node_name}: {entry.get('error')}")
                if (entry.get("enforcing") is True
                        and entry.get("observedGeneration") == obj["metadata"].get("generation")
                        and int(entry.get("localPolicyRevision") or 0) > after_revision):
                    return entry
            time.sleep(0.05)
        raise KubeError(f"{namespace}/{name} not enforcing on {self.node_name} after {timeout:.0f}s: status {entry or 'none'}")
