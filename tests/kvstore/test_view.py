"""Nodes and endpoints shared through etcd: each node sees the others, not
itself; a node that dies without revoking its lease stays until the lease
expires; on_view is told."""

from __future__ import annotations

import asyncio

import json
import threading
import time
from ipaddress import IPv4Address, IPv6Address

import pytest

from kvstore import RemoteEndpoint
from tests.kvstore.support import connected, eventually

pytestmark = pytest.mark.etcd

A_POD = IPv4Address("10.1.0.5")
B_POD = IPv4Address("10.2.0.7")


async def test_each_node_sees_the_others_node_and_endpoints_not_its_own(clusters, etcd):
    a, b = await clusters.node("a"), await clusters.node("b")
    await connected(a)
    await connected(b)
    await a.cluster.set_endpoint(A_POD, 300)
    await b.cluster.set_endpoint(B_POD, 301)

    await eventually(lambda: "b" in a.view.nodes and B_POD in a.view.endpoints, what="a sees b")
    await eventually(lambda: "a" in b.view.nodes and A_POD in b.view.endpoints, what="b sees a")
    assert a.view.nodes["b"] == b.info
    assert a.view.endpoints[B_POD] == RemoteEndpoint(ip=B_POD, identity=301, node="b")
    assert "a" not in a.view.nodes and A_POD not in a.view.endpoints
    assert "b" not in b.view.nodes and B_POD not in b.view.endpoints
    assert a.views and a.views[-1].nodes.keys() == {"b"}  # on_view was told

    keys = etcd.get_prefix("ciliate/state/")
    assert json.loads(keys["ciliate/state/ip/v1/10.1.0.5"].value) == {"identity": 300, "node": "a"}
    assert keys["ciliate/state/ip/v1/10.1.0.5"].lease == a.cluster._session.lease_id
    assert json.loads(keys["ciliate/state/nodes/v1/b"].value) == {
        "name": "b", "ip": str(b.info.ip), "pod_cidr": str(b.info.pod_cidr),
    }
    assert keys["ciliate/state/nodes/v1/b"].lease == b.cluster._session.lease_id

    # a change and a removal reach the other node too
    await b.cluster.set_endpoint(B_POD, 302)
    await eventually(lambda: a.view.endpoints.get(B_POD) == RemoteEndpoint(ip=B_POD, identity=302, node="b"))
    await b.cluster.remove_endpoint(B_POD)
    await eventually(lambda: B_POD not in a.view.endpoints, what="removal seen")
    assert "ciliate/state/ip/v1/10.2.0.7" not in etcd.get_prefix("ciliate/state/ip/")

    # an IPv6 address is published and seen the same way, under its own key
    b6 = IPv6Address("fd00:10:2::7")
    await b.cluster.set_endpoint(b6, 303)
    await eventually(lambda: a.view.endpoints.get(b6) == RemoteEndpoint(ip=b6, identity=303, node="b"), what="IPv6 seen")
    assert json.loads(etcd.get_prefix("ciliate/state/ip/")["ciliate/state/ip/v1/fd00:10:2::7"].value) == {"identity": 303, "node": "b"}


async def test_a_node_killed_without_revoke_stays_until_its_lease_expires(clusters, etcd):
    a, b = await clusters.node("a"), await clusters.node("b", lease_ttl=2.0)
    await connected(a)
    await connected(b)
    await b.cluster.set_endpoint(B_POD, 301)
    ident = await b.cluster.allocate_identity(frozenset({"k8s:app=b"}))
    await eventually(lambda: "b" in a.view.nodes and B_POD in a.view.endpoints, what="a sees b")

    lease = b.cluster._session.lease_id
    await clusters.stop(b)  # an agent killed: no revoke

    # Judged by etcd's word on the lease, not the clock (a late keepalive on
    # a loaded machine leaves less than the TTL): a's view first, then etcd's.
    def gone() -> bool:
        still = "b" in a.view.nodes
        ttl = etcd.lease_ttl(lease)
        assert still or ttl < 0, f"b left a's view while etcd still held its lease ({ttl} s left)"
        return not still

    await eventually(gone, timeout=30, what="b's node expires from a's view")
    await eventually(lambda: B_POD not in a.view.endpoints, timeout=30)
    assert not etcd.get_prefix(f"ciliate/state/identities/v1/refs/{ident}/")
    assert not etcd.get_prefix("ciliate/state/nodes/v1/b")
    assert a.views[-1].nodes == {} and dict(a.views[-1].endpoints) == {}


async def test_stop_with_revoke_removes_the_node_at_once(clusters, etcd):
    a, b = await clusters.node("a"), await clusters.node("b", lease_ttl=30.0)
    await connected(a)
    await connected(b)
    await b.cluster.set_endpoint(B_POD, 301)
    await eventually(lambda: B_POD in a.view.endpoints)
    await clusters.stop(b, revoke=True)
    await eventually(lambda: "b" not in a.view.nodes and B_POD not in a.view.endpoints, timeout=30)
    assert not (b.state_dir / "kvstore-lease.json").exists()


async def test_view_changes_are_coalesced_and_status_counts_them(clusters):
    a, b = await clusters.node("a"), await clusters.node("b")
    await connected(a)
    await connected(b)
    seen, rev0 = len(a.views), a.view.revision
    for i in range(20):
        await b.cluster.set_endpoint(IPv4Address(f"10.2.0.{10 + i}"), 400 + i)
    await eventually(lambda: len(a.view.endpoints) == 20)
    # Never more views than changes applied (b's own node and identity
    # records may land in the window too), each one newer than the last;
    # how many fewer depends on how busy the machine is.
    fresh = a.views[seen:]
    assert len(fresh) <= a.view.revision - rev0
    assert [v.revision for v in fresh] == sorted({v.revision for v in fresh})
    st = a.cluster.status()
    assert st["connected"] is True
    assert st["remote_nodes"] == 1 and st["remote_endpoints"] == 20
    assert st["lease_id"] == f"{a.cluster._session.lease_id:x}"
    assert st["revision"] == a.view.revision > 0
    json.dumps(st)  # JSON-able


async def test_start_returns_at_once_with_etcd_down_and_connects_later(clusters, etcd):
    etcd.stop()
    # etcd stays down until after this returns: a start that waited for etcd would never return.
    a = await asyncio.wait_for(clusters.node("a"), timeout=30)
    assert not a.cluster.connected
    await a.cluster.set_endpoint(A_POD, 300)  # desired state, no error
    etcd.start()
    await connected(a, timeout=30)
    await eventually(lambda: "ciliate/state/ip/v1/10.1.0.5" in etcd.get_prefix("ciliate/state/ip/"), what="published")
    await eventually(lambda: "ciliate/state/nodes/v1/a" in etcd.get_prefix("ciliate/state/nodes/"))


async def test_an_ip_published_by_another_node_is_not_taken_over(clusters, etcd):
    a, b = await clusters.node("a"), await clusters.node("b")
    await connected(a)
    await connected(b)
    await a.cluster.set_endpoint(A_POD, 300)
    await b.cluster.set_endpoint(A_POD, 301)  # a stale or bogus claim
    key = f"ciliate/state/ip/v1/{A_POD}"
    assert json.loads(etcd.get_prefix(key)[key].value) == {"identity": 300, "node": "a"}
    assert b.cluster.status()["conflicts"] == {key: "published by another node; not overwritten"}
    # once a lets go of it, b's endpoint is published
    await a.cluster.remove_endpoint(A_POD)
    await eventually(lambda: b.cluster.status()["conflicts"] == {}, what="conflict resolved")
    assert json.loads(etcd.get_prefix(key)[key].value) == {"identity": 301, "node": "b"}
    await eventually(lambda: a.view.endpoints.get(A_POD) == RemoteEndpoint(ip=A_POD, identity=301, node="b"))


async def test_stop_leaves_no_thread_behind(clusters):
    a = await clusters.node("a")
    await connected(a)
    await a.cluster.allocate_identity(frozenset({"k8s:app=x"}))
    assert any(t.name == "kvstore-etcd" for t in threading.enumerate())
    await clusters.stop(a)
    assert not any(t.name == "kvstore-etcd" for t in threading.enumerate())


async def test_new_node_labels_are_published_to_the_other_nodes(clusters, etcd):
    """A relabelled node (its Kubernetes Node) republishes its record; the
    other nodes' view follows, and nothing else of the record changes."""
    a, b = await clusters.node("a"), await clusters.node("b")
    await connected(a)
    await connected(b)
    await eventually(lambda: "b" in a.view.nodes, what="a sees b")
    assert a.view.nodes["b"].labels is None
    await b.cluster.set_node_labels({"role": "worker"})
    await eventually(lambda: a.view.nodes["b"].labels == {"role": "worker"}, what="the new labels seen")
    assert a.view.nodes["b"].ip == b.info.ip and a.view.nodes["b"].pod_cidr == b.info.pod_cidr
    await b.cluster.set_node_labels(None)
    await eventually(lambda: a.view.nodes["b"].labels is None, what="the labels removed")


async def test_an_endpoints_named_ports_reach_the_other_nodes_and_follow_changes(clusters, etcd):
    """What `port: http` means for a pod on another node travels with its
    address record; an endpoint without named ports keeps the old record
    shape (older agents read it alike)."""
    a, b = await clusters.node("a"), await clusters.node("b")
    await connected(a)
    await connected(b)
    await b.cluster.set_endpoint(B_POD, 301, (("http", 6, 8080),))
    await eventually(lambda: B_POD in a.view.endpoints and a.view.endpoints[B_POD].named_ports == (("http", 6, 8080),),
                     what="a sees b's named port")
    await b.cluster.set_endpoint(B_POD, 301, (("http", 6, 9090), ("dns", 17, 53)))
    await eventually(lambda: a.view.endpoints[B_POD].named_ports == (("dns", 17, 53), ("http", 6, 9090)),
                     what="the change seen")
    await b.cluster.set_endpoint(B_POD, 301)
    await eventually(lambda: a.view.endpoints[B_POD].named_ports == (), what="the names removed")
    keys = etcd.get_prefix("ciliate/state/")
    assert json.loads(keys[f"ciliate/state/ip/v1/{B_POD}"].value) == {"identity": 301, "node": "b"}
