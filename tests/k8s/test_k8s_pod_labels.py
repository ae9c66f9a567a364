"""Labels only the system may set, tried as a Pod's own labels through the API
server (kubesim, the real `kubernetes` client): the namespace, the
Namespace's labels, the service account, the cluster and label sources come
from the Namespace object and the Pod's spec, never from `metadata.labels`.
Each attack has an honest control showing the rule it tries to pass is real."""

from __future__ import annotations

import asyncio
import logging

import pytest
from kubernetes import client

from agent.core.flow_filter import FlowFilter
from tests.k8s.conftest import eventually

NS_LABEL = "k8s:io.kubernetes.pod.namespace"


def _ingress_policy(name: str, namespace: str, app: str, peers: list[dict], port: int = 80) -> dict:
    return {
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"endpointSelector": {"matchLabels": {"app": app}},
                 "ingress": [{"fromEndpoints": peers, "toPorts": [{"ports": [{"port": str(port), "protocol": "TCP"}]}]}]},
    }


async def _enforced(rig, name: str) -> None:
    await eventually(lambda: (p := rig.policy(name)) is not None and p.state == "enforced")


async def test_a_pod_label_cannot_pose_as_a_namespace_label(rig):
    rig.namespace("dev")
    rig.namespace("prod")
    rig.pod("db", {"app": "db"}, namespace="prod")
    rig.pod("ev", {"app": "c", "io.cilium.k8s.namespace.labels.team": "blue"}, namespace="dev")
    rig.pod("da", {"app": "c"}, namespace="dev")
    agent = rig.build()
    await agent.start(serve_api=False)
    client.NetworkingV1Api(rig.api).create_namespaced_network_policy("prod", {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "from-blue", "namespace": "prod"},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}],
                              "ports": [{"port": 80, "protocol": "TCP"}]}]},
    })
    db = await rig.endpoint("db", "10.0.0.2", namespace="prod", n=1)
    ev = await rig.endpoint("ev", "10.0.0.3", namespace="dev", n=2)
    da = await rig.endpoint("da", "10.0.0.4", namespace="dev", n=3)
    await _enforced(rig, "prod/from-blue")

    assert not rig.allowed(db.id, ev.id), "a pod label posed as its namespace's label"
    assert not rig.allowed(db.id, da.id)
    assert "k8s:io.cilium.k8s.namespace.labels.team" not in agent.table.view(ev.id).labels
    # The rule is real: once the Namespace itself says team=blue, both pods are in.
    rig.core.patch_namespace("dev", {"metadata": {"labels": {"team": "blue"}}})
    await eventually(lambda: rig.allowed(db.id, da.id) and rig.allowed(db.id, ev.id))
    assert agent.table.view(ev.id).labels["k8s:io.cilium.k8s.namespace.labels.team"] == "blue"


async def test_a_pod_label_cannot_pose_as_its_service_account(rig):
    rig.namespace("prod")
    rig.pod("db", {"app": "db"}, namespace="prod")
    rig.pod("ev", {"app": "c", "io.cilium.k8s.policy.serviceaccount": "prod-admin"}, namespace="prod")
    rig.pod("admin", {"app": "c"}, namespace="prod", service_account="prod-admin")
    agent = rig.build()
    await agent.start(serve_api=False)
    rig.create_cnp(_ingress_policy("from-admin", "prod", "db",
                                   [{"matchLabels": {"io.cilium.k8s.policy.serviceaccount": "prod-admin"}}]), namespace="prod")
    db = await rig.endpoint("db", "10.0.0.2", namespace="prod", n=1)
    ev = await rig.endpoint("ev", "10.0.0.3", namespace="prod", n=2)
    admin = await rig.endpoint("admin", "10.0.0.4", namespace="prod", n=3)
    await _enforced(rig, "prod/from-admin")

    assert rig.allowed(db.id, admin.id), "the pod that runs as prod-admin is admitted"
    assert not rig.allowed(db.id, ev.id), "a pod label posed as the service account"
    assert "k8s:io.cilium.k8s.policy.serviceaccount" not in agent.table.view(ev.id).labels


async def test_a_pod_label_cannot_move_it_into_another_namespace(rig):
    rig.namespace("dev")
    rig.namespace("prod")
    rig.pod("db", {"app": "db"}, namespace="prod")
    rig.pod("pc", {"app": "c"}, namespace="prod")
    rig.pod("ev", {"app": "c", "io.kubernetes.pod.namespace": "prod"}, namespace="dev")
    agent = rig.build()
    await agent.start(serve_api=False)
    # A namespaced rule's peers are in its own namespace: only prod's app=c.
    rig.create_cnp(_ingress_policy("from-c", "prod", "db", [{"matchLabels": {"app": "c"}}]), namespace="prod")
    db = await rig.endpoint("db", "10.0.0.2", namespace="prod", n=1)
    pc = await rig.endpoint("pc", "10.0.0.3", namespace="prod", n=2)
    ev = await rig.endpoint("ev", "10.0.0.4", namespace="dev", n=3)
    await _enforced(rig, "prod/from-c")

    assert rig.allowed(db.id, pc.id)
    assert not rig.allowed(db.id, ev.id), "a pod label moved the pod into prod"
    assert agent.table.view(ev.id).labels[NS_LABEL] == "dev"


async def test_a_pod_label_key_with_equals_cannot_take_it_out_of_its_namespace(rig):
    # "k8s:io.kubernetes.pod.namespace=zz" + "=" is how the canonical
    # "source:key=value" form spells namespace "zz=": the pod would leave the
    # policies of its own namespace.
    rig.namespace("dev")
    rig.pod("ev", {"app": "c", "io.kubernetes.pod.namespace=zz": ""}, namespace="dev")
    rig.pod("da", {"app": "c"}, namespace="dev")
    rig.pod("friend", {"app": "friend"}, namespace="dev")
    rig.pod("other", {"app": "other"}, namespace="dev")
    agent = rig.build()
    await agent.start(serve_api=False)
    rig.create_cnp(_ingress_policy("only-friends", "dev", "c", [{"matchLabels": {"app": "friend"}}]), namespace="dev")
    ev = await rig.endpoint("ev", "10.0.0.2", namespace="dev", n=1)
    da = await rig.endpoint("da", "10.0.0.3", namespace="dev", n=2)
    friend = await rig.endpoint("friend", "10.0.0.4", namespace="dev", n=3)
    other = await rig.endpoint("other", "10.0.0.5", namespace="dev", n=4)
    await _enforced(rig, "dev/only-friends")

    assert rig.allowed(da.id, friend.id) and not rig.allowed(da.id, other.id)
    assert rig.allowed(ev.id, friend.id)
    assert not rig.allowed(ev.id, other.id), "the pod left its namespace's policy"
    assert agent.table.view(ev.id).identity == agent.table.view(da.id).identity


async def test_a_pod_label_cannot_pose_as_the_cluster(rig):
    rig.namespace("prod")
    rig.pod("db", {"app": "db"}, namespace="prod")
    rig.pod("ev", {"app": "c", "io.cilium.k8s.policy.cluster": "partner"}, namespace="prod")
    agent = rig.build()
    await agent.start(serve_api=False)
    rig.create_cnp(_ingress_policy("from-partner", "prod", "db",
                                   [{"matchLabels": {"io.cilium.k8s.policy.cluster": "partner"}}], port=80), namespace="prod")
    rig.create_cnp(_ingress_policy("from-here", "prod", "db",
                                   [{"matchLabels": {"io.cilium.k8s.policy.cluster": "default"}}], port=81), namespace="prod")
    db = await rig.endpoint("db", "10.0.0.2", namespace="prod", n=1)
    ev = await rig.endpoint("ev", "10.0.0.3", namespace="prod", n=2)
    await _enforced(rig, "prod/from-partner")
    await _enforced(rig, "prod/from-here")

    assert not rig.allowed(db.id, ev.id, port=80), "a pod label posed as another cluster"
    assert rig.allowed(db.id, ev.id, port=81), "the agent's own cluster label selects the pod"
    assert agent.table.view(ev.id).labels["k8s:io.cilium.k8s.policy.cluster"] == "default"


@pytest.mark.parametrize("key", [
    pytest.param("reserved:host", id="reserved"),
    pytest.param("cidr:0.0.0.0/0", id="cidr"),
    pytest.param("k8s:io.cilium.k8s.policy.serviceaccount", id="k8s-source"),
])
async def test_a_pod_label_key_with_a_source_is_not_taken(rig, key):
    rig.pod("db", {"app": "db"})
    rig.pod("ev", {"app": "c", key: ""})
    rig.pod("da", {"app": "c"})
    agent = rig.build()
    await agent.start(serve_api=False)
    db = await rig.endpoint("db", "10.0.0.2", n=1)
    ev = await rig.endpoint("ev", "10.0.0.3", n=2)
    da = await rig.endpoint("da", "10.0.0.4", n=3)

    # `ciliate monitor --from-label <key>` shows the flows of what has that
    # label: never this pod's. The kernel's events are published in order, so
    # once an unfiltered subscriber saw the second one, the first was offered.
    sub = agent.flows.subscribe(flt=FlowFilter.parse(from_labels=[key]))
    marker = agent.flows.subscribe()
    try:
        for src, ip in ((ev, "10.0.0.3"), (da, "10.0.0.4")):
            rig.datapath.events.put_nowait({"type": "forward", "verdict": "forwarded", "src_ip": ip, "dst_ip": "10.0.0.2",
                                            "dst_port": 80, "src_identity": src.identity, "dst_identity": db.identity})
        while (await asyncio.wait_for(marker.queue.get(), 5)).src_ip != "10.0.0.4":
            pass
        assert sub.queue.empty(), f"the pod's flow passed for one with {key}"
    finally:
        sub.close()
        marker.close()
    labels = agent.table.view(ev.id).labels
    assert [k for k in labels if k.count(":") > 1] == [], labels
    assert ev.identity == da.identity, "the pod has the identity of its honest twin"


async def test_dropped_labels_are_warned_once_per_pod_change_and_counted(rig, caplog):
    caplog.set_level(logging.WARNING, logger="agent.adapters.kubernetes")
    rig.namespace("dev")
    rig.pod("ev", {"app": "c", "io.cilium.k8s.namespace.labels.team": "blue", "reserved:host": ""}, namespace="dev")
    agent = rig.build()
    await agent.start(serve_api=False)
    ev = await rig.endpoint("ev", "10.0.0.2", namespace="dev", n=1)

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "dev/ev" in r.getMessage()]

    assert len(warnings()) == 2, warnings()
    team, host = sorted(warnings(), key=lambda m: "reserved:host" in m)
    assert "io.cilium.k8s.namespace.labels.team" in team and "Namespace" in team
    assert "reserved:host" in host and "source" in host
    assert agent.status().kubernetes["pod_labels_dropped"] == 2
    assert "ciliate_pod_labels_dropped_total 2.0" in (await agent.scrape()).decode()

    # Asking again (a Namespace change re-reads every pod of it) warns no more.
    for _ in range(3):
        rig.source.endpoint_labels("dev/ev")
    rig.core.patch_namespace("dev", {"metadata": {"labels": {"team": "red"}}})
    await eventually(lambda: agent.table.view(ev.id).labels.get("k8s:io.cilium.k8s.namespace.labels.team") == "red")
    assert len(warnings()) == 2

    # A new version of the Pod that still carries one is a new change.
    rig.core.patch_namespaced_pod("ev", "dev", {"metadata": {"labels": {"app": "d", "reserved:host": None}}})
    await eventually(lambda: agent.table.view(ev.id).labels.get("k8s:app") == "d")
    assert len(warnings()) == 3
    assert "ciliate_pod_labels_dropped_total 3.0" in (await agent.scrape()).decode()
