"""The bundled examples load cleanly and do what their comments say."""

from __future__ import annotations

from pathlib import Path

import pytest
from policytest_helpers import run_trace

from policy.compiled import Protocol
from policy.load import load_paths

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_every_example_is_valid():
    res = load_paths([EXAMPLES])
    assert res.errors == []
    assert len(res.files) >= 10


def ex(name: str) -> str:
    return (EXAMPLES / name).read_text()


@pytest.mark.parametrize(
    "file,src,dst,port,proto,verdict",
    [
        pytest.param("cilium/l3-labels.yaml", "labels:role=frontend", "labels:role=backend", 5432, "TCP", "allowed", id="l3-frontend"),
        pytest.param("cilium/l3-labels.yaml", "labels:role=other", "labels:role=backend", 5432, "TCP", "denied", id="l3-other"),
        pytest.param("cilium/l4-ports.yaml", "labels:app=myService", "ip:1.1.1.1", 80, "TCP", "allowed", id="l4-80"),
        pytest.param("cilium/l4-ports.yaml", "labels:app=myService", "ip:1.1.1.1", 5005, "UDP", "allowed", id="l4-udp-range"),
        pytest.param("cilium/l4-ports.yaml", "labels:app=myService", "ip:1.1.1.1", 5005, "TCP", "denied", id="l4-tcp-not-in-range"),
        pytest.param("cilium/cidr-egress.yaml", "labels:app=myService", "ip:20.1.1.1", 443, "TCP", "allowed", id="cidr-host"),
        pytest.param("cilium/cidr-egress.yaml", "labels:app=myService", "ip:10.100.0.1", 443, "TCP", "denied", id="cidr-except"),
        pytest.param("cilium/cidr-egress.yaml", "labels:app=myService", "ip:10.1.0.1", 443, "TCP", "allowed", id="cidr-range"),
        pytest.param("cilium/entities.yaml", "entity:host", "labels:app=x", 8080, "TCP", "allowed", id="from-host"),
        pytest.param("cilium/entities.yaml", "labels:app=y", "labels:app=x", 8080, "TCP", "denied", id="not-from-peers"),
        pytest.param("cilium/entities.yaml", "labels:env=dev", "ip:93.184.216.34", 443, "TCP", "allowed", id="dev-to-world"),
        pytest.param("cilium/deny-world.yaml", "ip:93.184.216.34", "labels:app=internal", 443, "TCP", "denied", id="deny-world"),
        pytest.param("cilium/deny-world.yaml", "labels:app=web", "labels:app=internal", 443, "TCP", "allowed", id="cluster-allowed"),
        pytest.param("cilium/clusterwide.yaml", "labels:app=a,k8s:io.kubernetes.pod.namespace=shop",
                     "labels:k8s-app=kube-dns,k8s:io.kubernetes.pod.namespace=kube-system", 53, "UDP", "allowed", id="dns-any-ns"),
        pytest.param("cilium/clusterwide.yaml", "labels:app=a", "ip:8.8.8.8", 53, "UDP", "denied", id="dns-elsewhere"),
        pytest.param("kubernetes/default-deny.yaml", "labels:a=b", "labels:a=c,k8s:io.kubernetes.pod.namespace=prod", 80, "TCP",
                     "denied", id="np-default-deny"),
    ],
)
def test_example_behaves_as_documented(file, src, dst, port, proto, verdict):
    result, _ = run_trace(ex(file), src, dst, port, Protocol[proto])
    assert result.verdict == verdict, result.reason
