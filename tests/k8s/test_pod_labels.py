"""Which of a Pod's own labels become endpoint labels (pure, no API server):
the namespace, the Namespace's labels, the service account, the cluster and
label sources are the agent's, whatever the Pod says."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.adapters.kubernetes.pod_labels import (
    AGENT_PREFIX,
    CLUSTER_LABEL,
    SERVICE_ACCOUNT_LABEL,
    dropped_labels,
    endpoint_labels,
    refusal,
)
from agent.core.models import EndpointCreate
from policy.endpoint import NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX, namespace_of
from policy.identity import identity_labels, selectable_labels


def pod(labels: dict, namespace: str = "dev", sa: str | None = None) -> dict:
    return {"metadata": {"name": "ev", "namespace": namespace, "labels": labels},
            "spec": {"serviceAccountName": sa} if sa else {}}


def namespace(labels: dict) -> dict:
    return {"metadata": {"name": "dev", "labels": labels}}


@pytest.mark.parametrize("key, value, why", [
    pytest.param("app", "web", None, id="plain"),
    pytest.param("app.kubernetes.io/name", "web", None, id="prefixed"),
    pytest.param("team", "", None, id="empty-value"),
    pytest.param("io.kubernetes.pod.namespace", "prod", "metadata.namespace", id="namespace"),
    pytest.param("io.cilium.k8s.namespace.labels.team", "blue", "Namespace object", id="namespace-label"),
    pytest.param("io.cilium.k8s.policy.serviceaccount", "prod-admin", "spec.serviceAccountName", id="service-account"),
    pytest.param("io.cilium.k8s.policy.cluster", "partner", "set by the agent", id="cluster"),
    pytest.param("io.cilium.k8s.policy.name", "x", "set by the agent", id="other-agent-key"),
    pytest.param("io.cilium.k8s/x", "y", "set by the agent", id="agent-prefix-with-slash"),
    pytest.param("reserved:host", "", "source 'reserved'", id="reserved-source"),
    pytest.param("cidr:10.0.0.0/8", "", "source 'cidr'", id="cidr-source"),
    pytest.param("k8s:io.kubernetes.pod.namespace", "prod", "source 'k8s'", id="k8s-source"),
    pytest.param("io.kubernetes.pod.namespace=zz", "", "'='", id="equals"),
    pytest.param("bad key", "x", "not a Kubernetes label", id="space-in-key"),
    pytest.param("", "x", "not a Kubernetes label", id="empty-key"),
    pytest.param("app", "a b", "not a Kubernetes label", id="bad-value"),
    pytest.param("app", 3, "not a string", id="number-value"),
    pytest.param("app", None, "not a string", id="null-value"),
])
def test_refusal(key, value, why):
    got = refusal(key, value)
    assert (got is None) if why is None else (got is not None and why in got), got


@pytest.mark.parametrize("key", [
    NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX + "team", SERVICE_ACCOUNT_LABEL, CLUSTER_LABEL,
])
def test_every_label_the_agent_sets_is_one_a_pod_may_not(key):
    assert refusal(key, "x") is not None
    assert key == NAMESPACE_LABEL or key.startswith(AGENT_PREFIX)


def test_the_system_labels_come_from_the_namespace_and_the_spec():
    fake = {
        "app": "c",
        "io.kubernetes.pod.namespace": "prod",
        "io.cilium.k8s.namespace.labels.team": "blue",
        "io.cilium.k8s.policy.serviceaccount": "prod-admin",
        "io.cilium.k8s.policy.cluster": "partner",
        "reserved:host": "",
        "io.kubernetes.pod.namespace=zz": "",
    }
    got = endpoint_labels(pod(fake, sa="builder"), namespace({"env": "dev"}))
    assert got == {
        "k8s:app": "c",
        "k8s:io.kubernetes.pod.namespace": "dev",
        "k8s:io.cilium.k8s.namespace.labels.env": "dev",
        "k8s:io.cilium.k8s.policy.serviceaccount": "builder",
        "k8s:io.cilium.k8s.policy.cluster": "default",
    }
    assert set(dropped_labels(pod(fake))) == set(fake) - {"app"}


def test_a_pod_without_a_service_account_or_namespace_object_gets_none_of_theirs():
    got = endpoint_labels(pod({"io.cilium.k8s.policy.serviceaccount": "prod-admin"}), None)
    assert got == {"k8s:io.kubernetes.pod.namespace": "dev", "k8s:io.cilium.k8s.policy.cluster": "default"}


def test_an_honest_pod_loses_nothing():
    labels = {"app": "web", "app.kubernetes.io/part-of": "shop", "tier": ""}
    assert dropped_labels(pod(labels)) == {}
    assert {k for k in endpoint_labels(pod(labels), namespace({}))} >= {f"k8s:{k}" for k in labels}


def test_endpoint_labels_pass_the_checks_cni_labels_pass():
    # The REST model checks what ciliate-cni registers; Kubernetes mode's labels
    # bypass it, so they must be no looser.
    labels = endpoint_labels(pod({"app": "c", "reserved:host": "", "x=y": "", "v": "a b"}), namespace({"team": "red"}))
    EndpointCreate(container_id="c", host_ifname="lxc1", labels=labels)


_keys = st.one_of(
    st.text(max_size=40),
    st.sampled_from([NAMESPACE_LABEL, SERVICE_ACCOUNT_LABEL, CLUSTER_LABEL, "reserved:host", "cidr:0.0.0.0/0"]),
    st.builds(lambda a, b: a + b, st.sampled_from([NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX, "k8s:", "reserved:", AGENT_PREFIX]),
              st.text(max_size=20)),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, st.one_of(st.text(max_size=20), st.none(), st.integers()), max_size=8))
def test_no_pod_label_reaches_what_selectors_see_as_the_agents(labels):
    """Through the identity the policy layer builds: the namespace, the
    agent's keys and the label sources are what the agent set."""
    eps = endpoint_labels(pod(labels, sa="builder"), namespace({"team": "red"}))
    ident = identity_labels(eps)
    seen = selectable_labels(ident)
    assert namespace_of(eps) == "dev" and seen[NAMESPACE_LABEL] == "dev"
    agents = {k: v for k, v in seen.items() if k.startswith(AGENT_PREFIX)}
    assert agents == {NAMESPACE_LABELS_PREFIX + "team": "red", SERVICE_ACCOUNT_LABEL: "builder", CLUSTER_LABEL: "default"}
    assert all(s.startswith("k8s:") and s.count(":") == 1 for s in ident), sorted(ident)
