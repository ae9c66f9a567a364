"""kubesim through `kubectl` (set KUBECTL to pick the binary): apply, get,
label, delete, against a kubeconfig pointing at the server."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from kubernetes import client

from tests.kubeapi.conftest import CNP, pod

ROOT = Path(__file__).resolve().parents[2]
STARWARS = ROOT / "examples" / "starwars"
K8S_EXAMPLES = ROOT / "examples" / "kubernetes"


def test_apply_the_star_wars_stages_then_delete(kube, api, kubectl):
    out = kubectl("apply", "-f", str(STARWARS / "1-l3l4.yaml")).stdout
    assert "ciliumnetworkpolicy.cilium.io/rule1 created" in out
    kube.clear_request_log()
    out = kubectl("apply", "-f", str(STARWARS / "2-l7.yaml")).stdout
    assert "ciliumnetworkpolicy.cilium.io/rule1 configured" in out
    # Client-side apply: read the object, then a merge patch (custom resources take no strategic patch).
    writes = [(r.method, r.path) for r in kube.request_log() if "ciliumnetworkpolicies" in r.path]
    assert writes == [("GET", "/apis/cilium.io/v2/namespaces/default/ciliumnetworkpolicies/rule1"),
                      ("PATCH", "/apis/cilium.io/v2/namespaces/default/ciliumnetworkpolicies/rule1")]

    listed = json.loads(kubectl("get", "cnp", "-A", "-o", "json").stdout)
    [rule] = listed["items"]
    assert rule["metadata"]["generation"] == 2
    assert rule["spec"]["ingress"][0]["toPorts"][0]["rules"]["http"] == [
        {"method": "POST", "path": "/v1/request-landing"}]
    assert "kubectl.kubernetes.io/last-applied-configuration" in rule["metadata"]["annotations"]

    version = kube.resource_version
    assert "unchanged" in kubectl("apply", "-f", str(STARWARS / "2-l7.yaml")).stdout
    assert kube.resource_version == version  # nothing changed, nothing written

    out = kubectl("delete", "-f", str(STARWARS / "2-l7.yaml")).stdout
    assert 'ciliumnetworkpolicy.cilium.io "rule1" deleted' in out
    assert client.CustomObjectsApi(api).list_cluster_custom_object(*CNP)["items"] == []
    missing = kubectl("delete", "cnp", "rule1", check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr


def test_apply_network_policies_into_their_namespaces(kubectl, api):
    refused = kubectl("apply", "-f", str(K8S_EXAMPLES / "default-deny.yaml"), check=False)
    assert refused.returncode != 0 and 'namespaces "prod" not found' in refused.stderr
    kubectl("create", "namespace", "prod")
    out = kubectl("apply", "-f", str(K8S_EXAMPLES)).stdout
    assert "networkpolicy.networking.k8s.io/test-network-policy created" in out
    assert "networkpolicy.networking.k8s.io/default-deny-ingress created" in out
    # Every NetworkPolicy of the directory, named ports and SCTP included, is stored.
    written = sorted((d["metadata"]["namespace"], d["metadata"]["name"])
                     for f in K8S_EXAMPLES.glob("*.yaml") for d in yaml.safe_load_all(f.read_text()) if d)
    assert {("default", "api-named-ports"), ("default", "sigtran-sctp"), ("prod", "default-deny-ingress")} <= set(written)
    got = json.loads(kubectl("get", "netpol", "-A", "-o", "json").stdout)
    assert sorted((i["metadata"]["namespace"], i["metadata"]["name"]) for i in got["items"]) == written
    net = client.NetworkingV1Api(api)
    read = net.read_namespaced_network_policy("test-network-policy", "default")
    assert read.spec.egress[0].ports[0].end_port == 5990
    kubectl("label", "namespace", "prod", "project=myproject")
    assert client.CoreV1Api(api).read_namespace("prod").metadata.labels == {"project": "myproject"}


def test_label_a_pod(kubectl, api, collectors):
    core = client.CoreV1Api(api)
    core.create_namespaced_pod("default", pod("deathstar", "node-a", {"org": "empire"}))
    w = collectors(core.list_pod_for_all_namespaces, field_selector="spec.nodeName=node-a", timeout_seconds=10)
    assert w.next()["type"] == "ADDED"
    kubectl("label", "pod", "deathstar", "class=deathstar")
    kubectl("label", "pod", "deathstar", "org=alliance", "--overwrite")
    labels = [w.next()["object"].metadata.labels for _ in range(2)]
    assert labels == [{"org": "empire", "class": "deathstar"}, {"org": "alliance", "class": "deathstar"}]
    got = json.loads(kubectl("get", "pods", "-l", "org=alliance", "-o", "json").stdout)
    assert [p["metadata"]["name"] for p in got["items"]] == ["deathstar"]
