"""Faults with a real etcd: etcd stopped and restarted, history compacted
under a disconnected watcher, a lease revoked, a node cut off (through a
TCP proxy) for longer than its lease TTL."""

from __future__ import annotations

import asyncio

import json
import time
from ipaddress import IPv4Address

import pytest

from kvstore import KvstoreUnavailable, RemoteEndpoint
from tests.kvstore.support import connected, eventually, refused_endpoint

pytestmark = pytest.mark.etcd

X = frozenset({"k8s:app=x"})
Y = frozenset({"k8s:app=y"})
A_POD = IPv4Address("10.1.0.5")
B_POD = IPv4Address("10.2.0.7")
B_POD2 = IPv4Address("10.2.0.8")


def ip_keys(etcd) -> dict[str, dict]:
    return {k.rsplit("/", 1)[1]: json.loads(v.value) for k, v in etcd.get_prefix("ciliate/state/ip/v1/").items()}


async def test_etcd_down_fails_fast_keeps_the_view_and_catches_up_when_back(clusters, etcd):
    a, b = await clusters.node("a"), await clusters.node("b")
    await connected(a)
    await connected(b)
    x = await a.cluster.allocate_identity(X)
    await b.cluster.set_endpoint(B_POD, 301)
    # b's node and endpoint arrive on one watch, in either order.
    await eventually(lambda: B_POD in a.view.endpoints and "b" in a.view.nodes)
    view_before = a.view

    etcd.stop()
    # Fails (after op_timeout, 1 s), never waits for etcd to come back: the
    # bound is far above op_timeout so a loaded machine does not fail it.
    with pytest.raises(KvstoreUnavailable, match="etcd"):
        await asyncio.wait_for(a.cluster.allocate_identity(Y), timeout=20)
    assert await a.cluster.allocate_identity(X) == x  # held ids need no etcd
    await eventually(lambda: not a.cluster.connected, timeout=30, what="a notices")
    assert a.cluster.status()["last_error"]

    # desired state changes while etcd is away: no error, applied later
    await a.cluster.set_endpoint(A_POD, x)
    await a.cluster.release_identity(X)
    assert a.view.endpoints == view_before.endpoints  # the last known view is kept
    assert a.view.nodes == view_before.nodes

    etcd.start()
    await connected(a, timeout=30)
    await eventually(lambda: ip_keys(etcd).get("10.1.0.5") == {"identity": x, "node": "a"}, what="endpoint published")
    await eventually(lambda: not etcd.get_prefix(f"ciliate/state/identities/v1/refs/{x}/"), what="ref dropped")
    await eventually(lambda: b.view.endpoints.get(A_POD) == RemoteEndpoint(ip=A_POD, identity=x, node="a"))


async def test_etcd_restarted_with_its_data_watches_resume(clusters, etcd):
    a, b = await clusters.node("a"), await clusters.node("b")
    await connected(a)
    await connected(b)
    await b.cluster.set_endpoint(B_POD, 301)
    await eventually(lambda: B_POD in a.view.endpoints)
    relists = a.cluster.status()["relists"]
    lease_a = a.cluster._session.lease_id

    etcd.restart()
    await b.cluster.set_endpoint(B_POD2, 302)  # lands once b reconnects
    await eventually(lambda: B_POD2 in a.view.endpoints, timeout=30, what="new remote entry after the restart")
    assert a.view.endpoints[B_POD].identity == 301
    assert a.cluster.status()["relists"] == relists  # resumed from its revision, not relisted
    assert a.cluster._session.lease_id == lease_a  # etcd kept the lease
    await connected(a)


async def test_compaction_past_a_disconnected_watcher_forces_a_relist(clusters, etcd, proxy):
    a = await clusters.node("a", url=proxy.url, lease_ttl=30.0)
    b = await clusters.node("b")
    await connected(a)
    await connected(b)
    await b.cluster.set_endpoint(B_POD, 301)
    await eventually(lambda: B_POD in a.view.endpoints)
    relists = a.cluster.status()["relists"]

    proxy.partition()
    await eventually(lambda: not a.cluster.connected, timeout=30, what="a cut off")
    await b.cluster.remove_endpoint(B_POD)  # a delete a's watch would have missed
    await b.cluster.set_endpoint(B_POD2, 302)
    etcd.compact()
    assert B_POD in a.view.endpoints  # still the last known view

    proxy.heal()
    await eventually(lambda: B_POD2 in a.view.endpoints, timeout=30, what="relisted view")
    assert B_POD not in a.view.endpoints
    assert a.cluster.status()["relists"] == relists + 1
    # The view reaches its subscriber (the agent) a moment after it is in force.
    await eventually(lambda: set(a.views[-1].endpoints) == {B_POD2}, what="the relisted view handed on")
    await b.cluster.set_endpoint(B_POD, 303)  # and the watch runs again after the relist
    await eventually(lambda: B_POD in a.view.endpoints)


async def test_a_revoked_lease_is_replaced_and_everything_republished(clusters, etcd):
    a = await clusters.node("a", lease_ttl=30.0)
    await connected(a)
    x = await a.cluster.allocate_identity(X)
    await a.cluster.set_endpoint(A_POD, x)
    old = a.cluster._session.lease_id

    etcd.revoke(old)
    assert not etcd.get_prefix("ciliate/state/ip/") and not etcd.get_prefix("ciliate/state/nodes/")

    await eventually(lambda: a.cluster._session.lease_id not in (None, old), timeout=30, what="new lease")
    new = a.cluster._session.lease_id

    def republished():
        keys = etcd.get_prefix("ciliate/state/")
        mine = [f"ciliate/state/ip/v1/{A_POD}", "ciliate/state/nodes/v1/a", f"ciliate/state/identities/v1/refs/{x}/a"]
        return all(k in keys and keys[k].lease == new for k in mine)

    await eventually(republished, timeout=30, what="node, endpoint and ref under the new lease")
    assert etcd.get_prefix(f"ciliate/state/identities/v1/id/{x}")  # same number
    assert json.loads((a.state_dir / "kvstore-lease.json").read_text())["lease_id"] == new


async def test_a_node_cut_off_longer_than_its_ttl_comes_back_with_a_new_lease(clusters, etcd, proxy):
    a = await clusters.node("a", url=proxy.url, lease_ttl=1.0)
    b = await clusters.node("b", gc_grace=0.3, gc_interval=0.1)  # b collects what a stops referencing
    await connected(a)
    await connected(b)
    x = await a.cluster.allocate_identity(X)
    await a.cluster.set_endpoint(A_POD, x)
    await b.cluster.set_endpoint(B_POD, 301)
    await eventually(lambda: A_POD in b.view.endpoints and B_POD in a.view.endpoints)
    old = a.cluster._session.lease_id

    proxy.partition()
    # a's entries expire for the others; x loses its only ref and b's GC takes it
    await eventually(lambda: "a" not in b.view.nodes and A_POD not in b.view.endpoints, timeout=30)
    await eventually(lambda: x not in b.view.identities, timeout=30, what="x collected by b")
    assert B_POD in a.view.endpoints and "b" in a.view.nodes  # a keeps its last known view

    proxy.heal()
    await eventually(lambda: a.cluster._session.lease_id not in (None, old), timeout=30, what="a gets a new lease")
    await eventually(lambda: b.view.endpoints.get(A_POD) == RemoteEndpoint(ip=A_POD, identity=x, node="a"), timeout=30)
    await eventually(lambda: "a" in b.view.nodes, timeout=30)
    # a's ref re-created identity x with the same number and labels
    await eventually(lambda: b.view.identities.get(x) == X, timeout=30, what="x re-created")
    assert etcd.get_prefix(f"ciliate/state/identities/v1/refs/{x}/a")


async def test_a_dead_first_endpoint_fails_over_to_the_next(clusters, etcd):
    # The refused endpoint fails at once whatever the timeouts; the test's
    # fast 1 s calls and 2 s lease would also fail the live one on a loaded
    # machine and send the client back to the dead one (a full CI run did).
    with refused_endpoint() as dead:
        a = await clusters.node("a", url=f"{dead},{etcd.client_url}", op_timeout=5.0, lease_ttl=15.0)
        await connected(a, timeout=60)
        assert a.cluster.status()["endpoint"] == etcd.client_url
        assert await a.cluster.allocate_identity(X) >= 256


async def test_our_keys_deleted_by_hand_are_put_back(clusters, etcd):
    a = await clusters.node("a")  # periodic resync is off (gc_interval 3600 s): the watch must notice
    await connected(a)
    x = await a.cluster.allocate_identity(X)
    await a.cluster.set_endpoint(A_POD, x)
    mine = [f"ciliate/state/ip/v1/{A_POD}", "ciliate/state/nodes/v1/a", f"ciliate/state/identities/v1/refs/{x}/a"]
    await eventually(lambda: all(k in etcd.get_prefix("ciliate/state/") for k in mine), what="published")
    for key in mine:
        etcd.delete(key)
    await eventually(lambda: all(k in etcd.get_prefix("ciliate/state/") for k in mine), timeout=30, what="put back")
