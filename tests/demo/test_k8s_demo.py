"""`ciliate demo --k8s` without a kernel: the CNI request it makes for a
Kubernetes pod, and its API side (demo/kube.py: kubesim, kubectl, Pod
objects, the wait on `status.nodes[<node>]`) driving the agent core with
the fake kernel and Envoy of tests/agent/fakes.py. The kernel half runs in
tests/k8s/test_k8s_e2e.py (privileged)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from kubernetes import client

from agent.cni.config import display_name, endpoint_labels, parse_env, parse_netconf
from demo.kube import KubeCluster, KubeError, kubectl_binary
from demo.node import Pod, cni_request
from demo.scenario import EXAMPLES, K8S_STAGES, STAGES
from tests.k8s.conftest import NODE, K8sRig, eventually


def test_a_kubernetes_pod_joins_with_its_pod_identity_only(tmp_path: Path) -> None:
    pod = Pod("xwing", "cildemo-xwing", "", labels={"org": "alliance"}, namespace="default")
    conf, env = cni_request("ADD", pod, prefix="cildemo", socket=tmp_path / "s", ipam_dir=tmp_path, subnet="10.9.0.0/24")
    parsed_conf, parsed_env = parse_netconf(json.dumps(conf).encode()), parse_env(env)
    # The agent must take the labels from the Pod: CNI carries none of them.
    assert endpoint_labels(parsed_conf, parsed_env) == {"k8s:io.kubernetes.pod.namespace": "default"}
    assert display_name(parsed_env) == "default/xwing"

    plain = Pod("xwing", "cildemo-xwing", "", labels={"org": "alliance"})
    conf, env = cni_request("ADD", plain, prefix="cildemo", socket=tmp_path / "s", ipam_dir=tmp_path, subnet="10.9.0.0/24")
    assert endpoint_labels(parse_netconf(json.dumps(conf).encode()), parse_env(env)) == {"org": "alliance"}


def test_the_k8s_demo_has_the_file_demos_stages_then_deletes_the_policy() -> None:
    assert K8S_STAGES[:3] == STAGES
    last = K8S_STAGES[-1]
    assert last.policy_files == () and {r.expect for r in last.requests} == {"200"}


def test_ciliate_demo_takes_k8s() -> None:
    from agent.cli.ciliate import build_parser

    assert build_parser().parse_args(["demo", "--k8s"]).k8s is True
    assert build_parser().parse_args(["demo"]).k8s is False


@pytest.fixture
def cluster(tmp_path: Path):
    try:
        kubectl_binary()
    except KubeError as exc:
        pytest.skip(str(exc))
    with KubeCluster(tmp_path / "kube", node_name=NODE, bookmark_interval=0.2) as c:
        yield c


async def test_kubectl_stages_are_waited_for_until_this_node_enforces_them(tmp_path: Path, cluster: KubeCluster) -> None:
    for name, labels in (("deathstar", {"org": "empire", "class": "deathstar"}), ("xwing", {"org": "alliance", "class": "xwing"})):
        cluster.create_pod(name, labels)
    with client.ApiClient(client.Configuration(host=cluster.url)) as api:
        rig = K8sRig(tmp_path, cluster.server, api)
        agent = rig.build()
        await agent.start(serve_api=False)
        try:
            ds = await rig.endpoint("deathstar", "10.0.0.2", n=1)
            xw = await rig.endpoint("xwing", "10.0.0.3", n=2)
            assert ds.labels["k8s:class"] == "deathstar" and xw.labels["k8s:org"] == "alliance"  # from the Pods

            before = agent.policies().revision
            cluster.kubectl("apply", "-f", str(EXAMPLES / "1-l3l4.yaml"))
            entry = await asyncio.to_thread(cluster.wait_enforcing, "rule1", before)
            assert entry["enforcing"] is True and entry["observedGeneration"] == 1
            assert not rig.allowed(ds.id, xw.id)

            before = agent.policies().revision
            cluster.kubectl("apply", "-f", str(EXAMPLES / "2-l7.yaml"))
            entry = await asyncio.to_thread(cluster.wait_enforcing, "rule1", before)
            assert entry["observedGeneration"] == 2 and entry["localPolicyRevision"] > before

            # An entry about an older revision is not enough.
            with pytest.raises(KubeError, match="not enforcing"):
                await asyncio.to_thread(cluster.wait_enforcing, "rule1", entry["localPolicyRevision"], timeout=0.5)

            cluster.kubectl("delete", "-f", str(EXAMPLES / "2-l7.yaml"))
            await eventually(lambda: rig.policy("default/rule1") is None)
            # The policy left the book first; the kernel follows at the next regeneration.
            await eventually(lambda: rig.allowed(ds.id, xw.id))
            assert any(r.method == "PATCH" and r.path.endswith("/rule1/status") for r in cluster.request_log())
        finally:
            await agent.stop()

