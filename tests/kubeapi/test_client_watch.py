"""Watches through the real `kubernetes` client: events, resume, bookmarks,
410 and relist, server timeouts, dropped streams, the server down and back."""

from __future__ import annotations

import time

import pytest
import urllib3
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.kubeapi.conftest import CNP, cnp, pod


def _co(api) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def _create(api, name: str, **kw) -> dict:
    return _co(api).create_namespaced_custom_object(*CNP[:2], "default", CNP[2], cnp(name, **kw))


def test_list_then_watch_sees_add_modify_delete(api, collectors):
    co = _co(api)
    _create(api, "before")
    listed = co.list_namespaced_custom_object(*CNP[:2], "default", CNP[2])
    w = collectors(co.list_namespaced_custom_object, *CNP[:2], "default", CNP[2],
                   resource_version=listed["metadata"]["resourceVersion"], timeout_seconds=5)
    time.sleep(0.1)
    added = _create(api, "a")
    co.patch_namespaced_custom_object(*CNP[:2], "default", CNP[2], "a", {"spec": {"x": 1}})
    co.delete_namespaced_custom_object(*CNP[:2], "default", CNP[2], "a")
    got = [w.next() for _ in range(3)]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in got] == [
        ("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]
    assert got[0]["object"]["metadata"]["resourceVersion"] == added["metadata"]["resourceVersion"]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in got]
    assert versions == sorted(versions) and len(set(versions)) == 3
    assert got[1]["object"]["metadata"]["generation"] == 2


def test_watch_without_version_starts_with_the_current_objects(api, collectors):
    _create(api, "a")
    _create(api, "b")
    w = collectors(_co(api).list_cluster_custom_object, *CNP, timeout_seconds=5)
    assert [w.next()["object"]["metadata"]["name"] for _ in range(2)] == ["a", "b"]


def test_resume_replays_only_what_came_after_the_version(api, collectors):
    first = _create(api, "a")
    _create(api, "b")
    _co(api).delete_namespaced_custom_object(*CNP[:2], "default", CNP[2], "a")
    w = collectors(_co(api).list_cluster_custom_object, *CNP,
                   resource_version=first["metadata"]["resourceVersion"], timeout_seconds=5)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in (w.next(), w.next())] == [
        ("ADDED", "b"), ("DELETED", "a")]


def test_bookmarks_carry_the_current_version(kube, api, collectors):
    _create(api, "a")
    w = collectors(_co(api).list_cluster_custom_object, *CNP, allow_watch_bookmarks=True, timeout_seconds=5)
    assert w.next()["type"] == "ADDED"
    _create(api, "b")
    assert w.next()["type"] == "ADDED"
    bookmark = w.next(skip_bookmarks=False)
    assert bookmark["type"] == "BOOKMARK"
    assert bookmark["raw_object"]["metadata"]["resourceVersion"] == str(kube.resource_version)
    assert w.watch.resource_version == str(kube.resource_version)


def test_too_old_version_is_410_gone_and_a_relist_recovers(kube, api, collectors):
    co = _co(api)
    old = _create(api, "a")["metadata"]["resourceVersion"]
    _create(api, "b")
    kube.compact()
    w = collectors(co.list_cluster_custom_object, *CNP, resource_version=old)
    assert w.next() is None  # the client retried once, then gave up
    assert isinstance(w.error, ApiException) and w.error.status == 410
    assert "Expired" in w.error.reason
    # The relist shows the changed set; a watch from its version works.
    co.delete_namespaced_custom_object(*CNP[:2], "default", CNP[2], "a")
    listed = co.list_cluster_custom_object(*CNP)
    assert [i["metadata"]["name"] for i in listed["items"]] == ["b"]
    w2 = collectors(co.list_cluster_custom_object, *CNP,
                    resource_version=listed["metadata"]["resourceVersion"], timeout_seconds=5)
    _create(api, "c")
    ev = w2.next()
    assert (ev["type"], ev["object"]["metadata"]["name"]) == ("ADDED", "c")


def test_history_is_bounded(kube, api):
    first = _create(api, "first")["metadata"]["resourceVersion"]
    for i in range(60):  # more than the fixture's history_limit of 50
        _co(api).patch_namespaced_custom_object(*CNP[:2], "default", CNP[2], "first", {"spec": {"n": i}})
    with pytest.raises(ApiException) as e:
        for _ in watch.Watch().stream(_co(api).list_cluster_custom_object, *CNP,
                                      resource_version=first, timeout_seconds=2):
            pass
    assert e.value.status == 410


def test_server_side_timeout_ends_the_stream(api, kube):
    start = time.monotonic()
    events = list(watch.Watch().stream(_co(api).list_cluster_custom_object, *CNP, timeout_seconds=1))
    assert events == [] and 0.9 < time.monotonic() - start < 30  # ended by the server's timeout, not ours
    assert kube.open_watches == 0


def test_selector_moves_are_added_and_deleted(api, collectors):
    core = client.CoreV1Api(api)
    core.create_namespaced_pod("default", pod("p", "node-a", {"app": "web"}))
    w = collectors(core.list_pod_for_all_namespaces, field_selector="spec.nodeName=node-a",
                   label_selector="app=web", timeout_seconds=5)
    first = w.next()
    assert first["type"] == "ADDED" and isinstance(first["object"], client.V1Pod)
    core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"app": "db"}}})
    assert w.next()["type"] == "DELETED"
    core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"app": "web", "v": "2"}}})
    back = w.next()
    assert back["type"] == "ADDED" and back["object"].metadata.labels == {"app": "web", "v": "2"}
    core.create_namespaced_pod("default", pod("elsewhere", "node-b", {"app": "web"}))
    core.patch_namespaced_pod_status("p", "default", {"status": {"podIP": "10.0.0.7"}})
    ev = w.next()
    assert ev["type"] == "MODIFIED" and ev["object"].status.pod_ip == "10.0.0.7"


def test_dropped_stream_breaks_the_client_and_a_resume_loses_nothing(kube, api, collectors):
    co = _co(api)
    w = collectors(co.list_cluster_custom_object, *CNP, timeout_seconds=30)
    _create(api, "a")
    assert w.next()["type"] == "ADDED"
    seen = w.watch.resource_version
    assert kube.drop_watches() == 1
    assert w.next() is None
    assert isinstance(w.error, (urllib3.exceptions.ProtocolError, urllib3.exceptions.HTTPError))
    _create(api, "b")  # written while nobody watches
    w2 = collectors(co.list_cluster_custom_object, *CNP, resource_version=seen, timeout_seconds=5)
    assert w2.next()["object"]["metadata"]["name"] == "b"


def test_server_down_and_back_on_the_same_port(kube, api, collectors):
    co = _co(api)
    w = collectors(co.list_cluster_custom_object, *CNP, timeout_seconds=30)
    first = _create(api, "a")
    assert w.next()["type"] == "ADDED"
    port = kube.port
    kube.stop()
    assert w.next() is None and w.error is not None  # the stream was cut
    with pytest.raises(urllib3.exceptions.HTTPError):  # connection refused
        co.list_cluster_custom_object(*CNP, _request_timeout=2)
    time.sleep(0.3)
    kube.start()
    assert kube.port == port
    # Objects and history survived: a resume from the last seen version works.
    _create(api, "b")
    w2 = collectors(co.list_cluster_custom_object, *CNP,
                    resource_version=first["metadata"]["resourceVersion"], timeout_seconds=5)
    assert w2.next()["object"]["metadata"]["name"] == "b"


def test_request_log_counts_api_requests(kube, api):
    kube.clear_request_log()
    _create(api, "a")
    _co(api).patch_namespaced_custom_object_status(*CNP[:2], "default", CNP[2], "a", {"status": {"ok": True}})
    _co(api).list_cluster_custom_object(*CNP, label_selector="x=y")
    log = kube.request_log()
    assert [(r.method, r.path, r.status) for r in log] == [
        ("POST", "/apis/cilium.io/v2/namespaces/default/ciliumnetworkpolicies", 201),
        ("PATCH", "/apis/cilium.io/v2/namespaces/default/ciliumnetworkpolicies/a/status", 200),
        ("GET", "/apis/cilium.io/v2/ciliumnetworkpolicies", 200),
    ]
    assert log[-1].query == {"labelSelector": "x=y"} and not log[-1].is_watch


def test_a_node_is_listed_and_watched_by_name_as_the_agent_does(api, collectors):
    """One node's own Node object: list and watch with metadata.name, label
    patches as MODIFIED, the other nodes never seen."""
    core = client.CoreV1Api(api)
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name="node-a", labels={"kubernetes.io/hostname": "node-a"})))
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name="node-b")))
    listed = core.list_node(field_selector="metadata.name=node-a")
    assert [n.metadata.name for n in listed.items] == ["node-a"]
    w = collectors(core.list_node, field_selector="metadata.name=node-a",
                   resource_version=listed.metadata.resource_version, timeout_seconds=5)
    core.patch_node("node-b", {"metadata": {"labels": {"role": "worker"}}})
    core.patch_node("node-a", {"metadata": {"labels": {"role": "worker"}}})
    ev = w.next()
    assert ev["type"] == "MODIFIED" and ev["object"].metadata.labels == {"kubernetes.io/hostname": "node-a", "role": "worker"}
    core.patch_node("node-a", {"metadata": {"labels": {"role": None}}})
    assert w.next()["object"].metadata.labels == {"kubernetes.io/hostname": "node-a"}
    core.delete_node("node-a")
    assert w.next()["type"] == "DELETED"
    assert core.list_node(field_selector="metadata.name=node-a").items == []
    with pytest.raises(client.ApiException) as e:
        core.list_node(field_selector="spec.nodeName=node-a")  # not a field label of nodes
    assert e.value.status == 400
