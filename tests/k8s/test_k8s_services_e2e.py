"""CNP egress `toServices` with real traffic in the kernel: a Service's
backends are followed as they scale. The agent (demo.node.Node: kernel
datapath, pods in network namespaces) reads the policy, the pods, the
Services and the EndpointSlices from kubesim (demo/kube.py) inside the
node's namespace; the policy is applied with kubectl, the Service objects
written through the API as a controller writes them.

- A Service with a selector: the client reaches the pods it selects and no
  other; a pod relabelled into the selection becomes reachable, one
  relabelled out of it is dropped; the Service deleted, nothing is (fail
  closed).
- A selectorless Service: the client reaches the ready addresses of its
  EndpointSlice as the slice grows and shrinks. Its backends are hosts
  outside the cluster (`Node.add_host`: a namespace routed by the node, no
  endpoint, no program), the case selectorless Services exist for (an
  external database): a CIDR peer never selects a pod of this node, as in
  Cilium (an endpoint's identity outranks a CIDR identity in the ipcache),
  so a pod's address in the slice would not make the pod reachable, and the
  last test shows that too.

Every drop is proven from the server's side (it never saw the request).
Waits are on events (the policy's status, the client's policy map in the
kernel, or a request finally answered) under generous hang guards.
Privileged: the lead runs these."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from demo.kube import SERVICE_PATH, KubeCluster
from demo.node import NETNS_DIR, Lines, Node

GUARD = 60.0  # a hang guard: every wait returns as soon as its condition holds
SOURCE = "k8s:CiliumNetworkPolicy/default/client-egress"

POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: client-egress, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{app: client}}}}
  egress:
  - toServices: [{{k8sService: {{serviceName: {service}, namespace: default}}}}]
    toPorts: [{{ports: [{{port: "80", protocol: TCP}}]}}]
"""


@pytest.fixture
def k8s_node() -> Iterator[tuple[Node, KubeCluster]]:
    with Node(prefix="cilk8ssvc", subnet="10.214.0.0/24") as node, KubeCluster(
        node.workdir / "kube", node_name="cilk8ssvc-node", netns=NETNS_DIR / node.host_ns,
    ) as kube:
        node.start_agent("--k8s-api-server", kube.url, "--node-name", kube.node_name, "--k8s-sync-timeout", "30")
        yield node, kube


def wait_for(what: str, cond: Callable[[], Any], detail: Callable[[], Any] = lambda: None) -> Any:
    deadline = time.monotonic() + GUARD
    while not (got := cond()):
        assert time.monotonic() < deadline, f"{what}: not after {GUARD:.0f}s: {detail()}"
        time.sleep(0.05)
    return got


def hits(server: Lines, client_ip: str) -> int:
    return sum(1 for line in server.snapshot() if line.get("client") == client_ip)


def get(node: Node, dst: str, timeout: float = 1.0) -> str:
    got = node.request("client", "POST", f"{dst}:80", "/v1/request-landing", timeout=timeout)
    if "status" in got:
        return str(got["status"])
    return "dropped" if got.get("error") == "timeout" else str(got)


def reached(node: Node, dst: str, server: Lines) -> None:
    """Until a request from the client is answered (the policy change may
    still be on its way to the kernel), and the server saw it."""
    before = hits(server, node.pods["client"].ip)
    last: list[str] = []
    wait_for(f"client -> {dst}", lambda: last.append(get(node, dst)) or last[-1] == "200", lambda: last[-1])
    assert hits(server, node.pods["client"].ip) > before


def dropped(node: Node, dst: str, server: Lines) -> None:
    """A request from the client times out and the server never saw it:
    dropped in the kernel."""
    before = hits(server, node.pods["client"].ip)
    assert get(node, dst) == "dropped"
    assert hits(server, node.pods["client"].ip) == before, f"{dst} saw the request"


def egress_entries(node: Node) -> list[dict]:
    """The client's egress entries in its policy map in the kernel."""
    dump = node.ciliate_json("bpf", "policy", "get", str(node.pods["client"].endpoint_id))
    return [e for e in dump["entries"] if e["direction"] == "egress"]


def apply_policy(node: Node, kube: KubeCluster, service: str) -> None:
    before = node.policy_revision()
    kube.kubectl("apply", "-f", "-", stdin=POLICY.format(service=service))
    entry = kube.wait_enforcing("client-egress", after_revision=before, timeout=GUARD)
    assert entry["ok"] is True


def policy_revision_after(node: Node, before: int) -> bool:
    """The policy naming the Service was recompiled and is enforced, at a
    revision newer than `before`."""
    pols = node.ciliate_json("policy", "get")
    return any(p["source"] == SOURCE and p["state"] == "enforced" and p["revision"] > before for p in pols["policies"])


def add_pod(node: Node, kube: KubeCluster, name: str, labels: dict[str, str]) -> None:
    kube.create_pod(name, labels)
    node.add_pod(name, labels, namespace="default")


@pytest.mark.privileged
def test_a_selector_services_pods_are_followed_as_they_are_relabelled(k8s_node) -> None:
    node, kube = k8s_node
    add_pod(node, kube, "client", {"app": "client"})
    servers: dict[str, Lines] = {}
    for name, app in (("db-0", "db"), ("db-1", "db"), ("web", "web")):
        add_pod(node, kube, name, {"app": app})
        servers[name] = node.watch(node.serve_deathstar(name, port=80))
    ip = {name: node.pods[name].ip for name in servers}
    for name in servers:  # no policy yet: every server answers, so a drop later is the policy's
        reached(node, ip[name], servers[name])

    kube.put_service("db", selector={"app": "db"})
    apply_policy(node, kube, "db")
    reached(node, ip["db-0"], servers["db-0"])
    reached(node, ip["db-1"], servers["db-1"])
    dropped(node, ip["web"], servers["web"])

    # Scale up: web joins the Service's selection.
    kube.kubectl("label", "pod", "web", "app=db", "--overwrite")
    reached(node, ip["web"], servers["web"])
    reached(node, ip["db-0"], servers["db-0"])

    # Scale down: db-1 leaves it. Wait until its new identity is known and
    # the client's map in the kernel does not admit it, then prove the drop.
    def db1_endpoint() -> dict:
        return next(e for e in node.ciliate_json("endpoint", "list")["endpoints"] if e["name"] == "default/db-1")

    as_db = db1_endpoint()["identity"]
    kube.kubectl("label", "pod", "db-1", "app=retired", "--overwrite")

    def retired_identity() -> int | None:
        # The new labels show as soon as the Pod event is in; the identity
        # follows with the regeneration.
        ep = db1_endpoint()
        return ep["identity"] if ep["labels"].get("k8s:app") == "retired" and ep["identity"] not in (None, as_db) else None

    db1 = wait_for("db-1 relabelled", retired_identity)
    wait_for("db-1 out of the client's map", lambda: all(e["identity"] != db1 for e in egress_entries(node)),
             lambda: egress_entries(node))
    dropped(node, ip["db-1"], servers["db-1"])
    reached(node, ip["db-0"], servers["db-0"])
    reached(node, ip["web"], servers["web"])

    # The Service goes: the rule selects nothing and allows nothing (fail closed).
    before = node.policy_revision()
    kube.delete(SERVICE_PATH.format(ns="default"), "db")
    wait_for("policy recompiled without the Service", lambda: policy_revision_after(node, before),
             lambda: node.ciliate_json("policy", "get"))
    for name in ("db-0", "web"):
        dropped(node, ip[name], servers[name])
    pol = next(p for p in node.ciliate_json("policy", "get")["policies"] if p["source"] == SOURCE)
    assert any("selects nothing: no such Service" in w for w in pol["warnings"]), pol


@pytest.mark.privileged
def test_a_selectorless_services_endpointslice_is_followed_as_it_scales(k8s_node) -> None:
    node, kube = k8s_node
    add_pod(node, kube, "client", {"app": "client"})
    # Two hosts outside the cluster, each on its own link routed by the node.
    hosts = {"ext-a": ("10.215.0.2", "10.215.0.1"), "ext-b": ("10.215.0.6", "10.215.0.5")}
    servers: dict[str, Lines] = {}
    for name, (address, gateway) in hosts.items():
        node.add_host(name, address, gateway)
        servers[name] = node.watch(node.serve_deathstar(name, port=80))
    a, b = hosts["ext-a"][0], hosts["ext-b"][0]
    reached(node, a, servers["ext-a"])  # no policy yet: both answer, so a drop later is the policy's
    reached(node, b, servers["ext-b"])

    kube.put_service("legacy-db")
    kube.put_endpoint_slice("legacy-db-1", "legacy-db", {a: True})
    apply_policy(node, kube, "legacy-db")
    reached(node, a, servers["ext-a"])
    dropped(node, b, servers["ext-b"])

    # Scale up: the slice lists b too.
    kube.put_endpoint_slice("legacy-db-1", "legacy-db", {a: True, b: True})
    reached(node, b, servers["ext-b"])
    reached(node, a, servers["ext-a"])

    # Scale down: a leaves the slice (b stays); then b is listed but not
    # ready (terminating), and a is back not ready: no backend. Each change
    # recompiles the policy: wait until it is enforced at a newer revision.
    for addresses, gone, kept in (({b: True}, [a], [b]), ({a: False, b: False}, [a, b], [])):
        before = node.policy_revision()
        kube.put_endpoint_slice("legacy-db-1", "legacy-db", addresses)
        wait_for(f"policy recompiled for {addresses}", lambda: policy_revision_after(node, before),
                 lambda: node.ciliate_json("policy", "get"))
        for address in gone:
            dropped(node, address, servers["ext-a" if address == a else "ext-b"])
        for address in kept:
            reached(node, address, servers["ext-a" if address == a else "ext-b"])
    pol = next(p for p in node.ciliate_json("policy", "get")["policies"] if p["source"] == SOURCE)
    assert any("no selector and no ready endpoint" in w for w in pol["warnings"]), pol


@pytest.mark.privileged
def test_a_selectorless_service_never_selects_a_pod_of_this_node(k8s_node) -> None:
    """Cilium's rule, in the kernel: an EndpointSlice address that is a local
    pod's stays that pod's endpoint identity, which the CIDR peer does not
    name. The control: the same policy admits an outside host's address."""
    node, kube = k8s_node
    add_pod(node, kube, "client", {"app": "client"})
    add_pod(node, kube, "db", {"app": "db"})
    pod_server = node.watch(node.serve_deathstar("db", port=80))
    node.add_host("ext", "10.215.0.10", "10.215.0.9")
    ext_server = node.watch(node.serve_deathstar("ext", port=80))
    pod_ip, ext_ip = node.pods["db"].ip, node.pods["ext"].ip
    reached(node, pod_ip, pod_server)

    kube.put_service("legacy-db")
    kube.put_endpoint_slice("legacy-db-1", "legacy-db", {pod_ip: True, ext_ip: True})
    apply_policy(node, kube, "legacy-db")
    reached(node, ext_ip, ext_server)
    dropped(node, pod_ip, pod_server)
