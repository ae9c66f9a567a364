"""kubesim through the real `kubernetes` client: objects, errors, selectors,
the status subresource."""

from __future__ import annotations

import json

import httpx
import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.kubeapi.conftest import CCNP, CNP, cnp, pod


def _error(exc: ApiException) -> dict:
    return json.loads(exc.body)


def test_create_get_list_carry_server_metadata(api):
    co = client.CustomObjectsApi(api)
    created = co.create_namespaced_custom_object(*CNP[:2], "default", CNP[2], cnp("a"))
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1
    assert created["kind"] == "CiliumNetworkPolicy" and meta["namespace"] == "default"
    got = co.get_namespaced_custom_object(*CNP[:2], "default", CNP[2], "a")
    assert got == created
    co.create_cluster_custom_object(*CCNP, {"metadata": {"name": "cw"}, "spec": {}})
    listed = co.list_cluster_custom_object(*CNP)
    assert [i["metadata"]["name"] for i in listed["items"]] == ["a"]
    # The list's version is the newest write (the clusterwide policy came after "a").
    assert int(listed["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert co.get_cluster_custom_object(*CCNP, "cw")["kind"] == "CiliumClusterwideNetworkPolicy"


def test_errors_are_status_objects(api):
    co = client.CustomObjectsApi(api)
    with pytest.raises(ApiException) as e:
        co.get_namespaced_custom_object(*CNP[:2], "default", CNP[2], "nope")
    assert e.value.status == 404 and _error(e.value)["reason"] == "NotFound"
    assert _error(e.value)["kind"] == "Status"

    co.create_namespaced_custom_object(*CNP[:2], "default", CNP[2], cnp("a"))
    with pytest.raises(ApiException) as e:
        co.create_namespaced_custom_object(*CNP[:2], "default", CNP[2], cnp("a"))
    assert e.value.status == 409 and _error(e.value)["reason"] == "AlreadyExists"

    nameless = cnp("x")
    del nameless["metadata"]["name"]
    with pytest.raises(ApiException) as e:
        co.create_namespaced_custom_object(*CNP[:2], "default", CNP[2], nameless)
    assert e.value.status == 422 and _error(e.value)["reason"] == "Invalid"

    with pytest.raises(ApiException) as e:
        co.create_namespaced_custom_object(*CNP[:2], "nowhere", CNP[2], cnp("b", namespace="nowhere"))
    assert e.value.status == 404 and 'namespaces "nowhere" not found' in _error(e.value)["message"]

    resp = httpx.post(f"{api.configuration.host}/apis/cilium.io/v2/namespaces/default/ciliumnetworkpolicies/a",
                      json={})
    assert resp.status_code == 405 and resp.json()["reason"] == "MethodNotAllowed"


def test_replace_with_a_stale_version_conflicts_and_generation_follows_spec(api):
    co = client.CustomObjectsApi(api)
    first = co.create_namespaced_custom_object(*CNP[:2], "default", CNP[2], cnp("a"))
    body = cnp("a", port="81")
    body["metadata"]["resourceVersion"] = first["metadata"]["resourceVersion"]
    second = co.replace_namespaced_custom_object(*CNP[:2], "default", CNP[2], "a", body)
    assert second["metadata"]["generation"] == 2
    assert second["metadata"]["uid"] == first["metadata"]["uid"]
    with pytest.raises(ApiException) as e:
        co.replace_namespaced_custom_object(*CNP[:2], "default", CNP[2], "a", body)  # still the old version
    assert e.value.status == 409 and _error(e.value)["reason"] == "Conflict"

    labelled = co.patch_namespaced_custom_object(*CNP[:2], "default", CNP[2], "a",
                                                 {"metadata": {"labels": {"team": "x"}}})
    assert labelled["metadata"]["generation"] == 2  # metadata only: the generation stays
    assert int(labelled["metadata"]["resourceVersion"]) > int(second["metadata"]["resourceVersion"])
    patched = co.patch_namespaced_custom_object(
        *CNP[:2], "default", CNP[2], "a",
        [{"op": "replace", "path": "/spec/ingress/0/toPorts/0/ports/0/port", "value": "82"}],
        _content_type="application/json-patch+json")
    assert patched["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"] == "82"
    assert patched["metadata"]["generation"] == 3


def test_status_subresource_changes_only_status(api):
    co = client.CustomObjectsApi(api)
    created = co.create_namespaced_custom_object(*CNP[:2], "default", CNP[2], cnp("a") | {"status": {"x": 1}})
    assert "status" not in created  # the main resource ignores status
    node_status = {"status": {"nodes": {"node-1": {"enforcing": True, "ok": True}}},
                   "spec": {"hijacked": True}, "metadata": {"labels": {"hijacked": "yes"}}}
    after = co.patch_namespaced_custom_object_status(*CNP[:2], "default", CNP[2], "a", node_status)
    assert after["status"] == {"nodes": {"node-1": {"enforcing": True, "ok": True}}}
    assert after["spec"] == created["spec"] and not after["metadata"].get("labels")
    assert int(after["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    assert after["metadata"]["generation"] == 1

    # A write to the main resource keeps the status the subresource wrote.
    replaced = co.replace_namespaced_custom_object(*CNP[:2], "default", CNP[2], "a",
                                                   cnp("a", port="90") | {"status": {}})
    assert replaced["status"] == after["status"]
    got = co.get_namespaced_custom_object_status(*CNP[:2], "default", CNP[2], "a")
    assert got["status"] == after["status"]
    # The same status again is a no-op: no new version (so no watch event).
    again = co.patch_namespaced_custom_object_status(*CNP[:2], "default", CNP[2], "a",
                                                     {"status": after["status"]})
    assert again["metadata"]["resourceVersion"] == replaced["metadata"]["resourceVersion"]


def test_label_and_node_field_selectors(api):
    core = client.CoreV1Api(api)
    core.create_namespaced_pod("default", pod("p1", "node-a", {"app": "web", "tier": "front"}))
    core.create_namespaced_pod("default", pod("p2", "node-b", {"app": "web"}))
    core.create_namespaced_pod("default", pod("p3", "node-a", {"app": "db"}))

    def names(**kw) -> list[str]:
        return [p.metadata.name for p in core.list_pod_for_all_namespaces(**kw).items]

    assert names(field_selector="spec.nodeName=node-a") == ["p1", "p3"]
    assert names(label_selector="app=web") == ["p1", "p2"]
    assert names(label_selector="app in (web, db),!tier") == ["p2", "p3"]
    assert names(label_selector="app=web", field_selector="spec.nodeName=node-a") == ["p1"]
    assert names(field_selector="metadata.name!=p1,metadata.namespace=default") == ["p2", "p3"]
    with pytest.raises(ApiException) as e:
        names(field_selector="spec.bogus=1")
    assert e.value.status == 400 and "field label not supported" in _error(e.value)["message"]
    assert core.read_namespaced_pod_status("p1", "default").status.phase == "Pending"


def test_builtin_kinds_and_namespace_deletion(api):
    core, net = client.CoreV1Api(api), client.NetworkingV1Api(api)
    ns = core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="prod", labels={"env": "p"})))
    assert ns.status.phase == "Active"
    net.create_namespaced_network_policy("prod", client.V1NetworkPolicy(
        metadata=client.V1ObjectMeta(name="deny"), spec=client.V1NetworkPolicySpec(pod_selector={})))
    # A strategic merge patch (the client's choice for a dict body on a built-in kind).
    core.patch_namespace("prod", {"metadata": {"labels": {"team": "x"}}})
    assert core.read_namespace("prod").metadata.labels == {"env": "p", "team": "x"}
    assert [n.metadata.name for n in core.list_namespace(label_selector="team=x").items] == ["prod"]
    core.delete_namespace("prod")
    assert net.list_network_policy_for_all_namespaces().items == []
