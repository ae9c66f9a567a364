"""Cluster-wide identities on a real etcd: agreement, races, references, GC."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from kvstore import identities, layout
from kvstore.gc import GcTracker
from tests.kvstore.support import connected, eventually

pytestmark = pytest.mark.etcd

APP_X = frozenset({"k8s:app=x", "k8s:io.kubernetes.pod.namespace=default"})
APP_Y = frozenset({"k8s:app=y", "k8s:io.kubernetes.pod.namespace=default"})


async def test_same_labels_same_id_on_both_nodes_different_labels_differ(clusters, etcd):
    a, b = await clusters.node("a"), await clusters.node("b")
    await connected(a)
    await connected(b)
    x_a = await a.cluster.allocate_identity(APP_X)
    x_b = await b.cluster.allocate_identity(APP_X)
    y_b = await b.cluster.allocate_identity(APP_Y)
    assert x_a == x_b
    assert y_b != x_a
    assert all(layout.ID_MIN <= n <= layout.ID_MAX for n in (x_a, y_b))

    keys = etcd.get_prefix("ciliate/state/identities/v1/")
    assert json.loads(keys[f"ciliate/state/identities/v1/id/{x_a}"].value) == sorted(APP_X)
    assert keys["ciliate/state/identities/v1/labels/" + ";".join(sorted(APP_X))].value == str(x_a)
    refs = {k for k in keys if k.startswith("ciliate/state/identities/v1/refs/")}
    assert refs == {
        f"ciliate/state/identities/v1/refs/{x_a}/a",
        f"ciliate/state/identities/v1/refs/{x_a}/b",
        f"ciliate/state/identities/v1/refs/{y_b}/b",
    }
    # refs live under each node's lease
    assert keys[f"ciliate/state/identities/v1/refs/{x_a}/a"].lease == a.cluster._session.lease_id
    assert keys[f"ciliate/state/identities/v1/refs/{x_a}/b"].lease == b.cluster._session.lease_id
    # and every node's view lists both identities
    await eventually(lambda: a.view.identities.get(y_b) == APP_Y and a.view.identities.get(x_a) == APP_X)


async def test_concurrent_allocation_of_the_same_labels_gives_one_id(clusters):
    nodes = [await clusters.node(n) for n in ("a", "b", "c")]
    for n in nodes:
        await connected(n)
    for round_ in range(5):
        labels = frozenset({f"k8s:app=race{round_}"})
        ids = await asyncio.gather(*(n.cluster.allocate_identity(labels) for n in nodes for _ in range(2)))
        assert len(set(ids)) == 1, ids


async def test_concurrent_allocation_of_many_label_sets_gives_distinct_ids(clusters, etcd):
    a, b = await clusters.node("a"), await clusters.node("b")
    await connected(a)
    await connected(b)
    sets = [frozenset({f"k8s:app=app{i}"}) for i in range(40)]
    got_a, got_b = await asyncio.gather(
        asyncio.gather(*(a.cluster.allocate_identity(s) for s in sets)),
        asyncio.gather(*(b.cluster.allocate_identity(s) for s in reversed(sets))),
    )
    got_b = list(reversed(got_b))
    assert got_a == got_b
    assert len(set(got_a)) == len(sets)
    ids = {k for k in etcd.get_prefix("ciliate/state/identities/v1/id/")}
    assert len(ids) == len(sets)


async def test_release_drops_only_this_nodes_ref(clusters, etcd):
    a, b = await clusters.node("a"), await clusters.node("b")
    await connected(a)
    await connected(b)
    n = await a.cluster.allocate_identity(APP_X)
    assert await b.cluster.allocate_identity(APP_X) == n
    await a.cluster.release_identity(APP_X)
    refs = set(etcd.get_prefix(f"ciliate/state/identities/v1/refs/{n}/"))
    assert refs == {f"ciliate/state/identities/v1/refs/{n}/b"}
    assert f"ciliate/state/identities/v1/id/{n}" in etcd.get_prefix("ciliate/state/identities/v1/id/")
    # allocating again takes the same id and the ref back
    assert await a.cluster.allocate_identity(APP_X) == n
    assert f"ciliate/state/identities/v1/refs/{n}/a" in etcd.get_prefix("ciliate/state/identities/v1/refs/")


async def test_labels_with_separators_are_distinct_identities(clusters):
    a = await clusters.node("a")
    await connected(a)
    one = await a.cluster.allocate_identity(frozenset({"k8s:a=1;k8s:b=2"}))
    two = await a.cluster.allocate_identity(frozenset({"k8s:a=1", "k8s:b=2"}))
    three = await a.cluster.allocate_identity(frozenset({"k8s:a=1\\", "k8s:b=2"}))
    assert len({one, two, three}) == 3


async def test_gc_deletes_an_unreferenced_identity_only_after_the_grace(clusters, etcd):
    a = await clusters.node("a", gc_grace=1.5, gc_interval=0.2)
    await connected(a)
    n = await a.cluster.allocate_identity(APP_X)
    kept = await a.cluster.allocate_identity(APP_Y)
    await a.cluster.release_identity(APP_X)
    released = time.monotonic()
    id_key = f"ciliate/state/identities/v1/id/{n}"
    labels_key = "ciliate/state/identities/v1/labels/" + ";".join(sorted(APP_X))
    await eventually(lambda: id_key not in etcd.get_prefix(id_key), timeout=30, what="identity collected")
    assert time.monotonic() - released >= 1.5
    assert labels_key not in etcd.get_prefix("ciliate/state/identities/v1/labels/")
    assert f"ciliate/state/identities/v1/id/{kept}" in etcd.get_prefix("ciliate/state/identities/v1/id/")
    await eventually(lambda: n not in a.view.identities, what="view drops the collected identity")


async def test_identity_referenced_again_during_the_grace_survives(clusters, etcd):
    grace = 3.0  # room for a loaded machine between "seen unreferenced" and b's reference
    a = await clusters.node("a", gc_grace=grace, gc_interval=0.2)
    b = await clusters.node("b")
    await connected(a)
    await connected(b)
    n = await a.cluster.allocate_identity(APP_X)
    await a.cluster.release_identity(APP_X)
    released = time.monotonic()
    await eventually(lambda: n in a.cluster._gc.candidates, what="a's GC sees it unreferenced")
    assert await b.cluster.allocate_identity(APP_X) == n
    await eventually(lambda: n not in a.cluster._gc.candidates, what="a's GC sees b's reference")
    await asyncio.sleep(max(0.0, released + grace + 0.5 - time.monotonic()))  # past the grace counted from the release
    assert f"ciliate/state/identities/v1/id/{n}" in etcd.get_prefix("ciliate/state/identities/v1/id/")
    assert n not in a.cluster._gc.candidates


async def test_reference_racing_the_gc_delete_wins(clusters, etcd):
    """The GC decided to delete (due after the grace), then a node
    references the id before the delete transaction: the delete fails."""
    a, b = await clusters.node("a"), await clusters.node("b")
    await connected(a)
    await connected(b)
    n = await a.cluster.allocate_identity(APP_X)
    await a.cluster.release_identity(APP_X)

    tracker = GcTracker(grace=10.0)
    etcd_client = a.cluster._etcd
    listing = await identities.list_identities(etcd_client)
    ids = {i: mod for i, (mod, _) in listing.ids.items()}
    assert tracker.scan(ids, listing.refs.keys(), now=100.0) == []
    due = tracker.scan(ids, listing.refs.keys(), now=110.0)
    assert due == [(n, ids[n])]

    assert await b.cluster.allocate_identity(APP_X) == n  # the race: b references it now
    assert not await identities.delete_if_unchanged(etcd_client, n, ids[n], listing.ids[n][1])
    assert f"ciliate/state/identities/v1/id/{n}" in etcd.get_prefix("ciliate/state/identities/v1/id/")

    # without the race the same delete goes through
    await b.cluster.release_identity(APP_X)
    listing = await identities.list_identities(etcd_client)
    mod, value = listing.ids[n]
    assert await identities.delete_if_unchanged(etcd_client, n, mod, value)
    assert etcd.get_prefix("ciliate/state/identities/v1/") == {}


async def test_a_dead_nodes_refs_vanish_with_its_lease(clusters, etcd):
    a, b = await clusters.node("a"), await clusters.node("b", lease_ttl=1.0)
    await connected(a)
    await connected(b)
    n = await b.cluster.allocate_identity(APP_X)
    await clusters.stop(b)  # no revoke: the lease lives out its TTL
    ref = f"ciliate/state/identities/v1/refs/{n}/b"
    assert ref in etcd.get_prefix(ref)
    await eventually(lambda: ref not in etcd.get_prefix(ref), timeout=30, what="b's ref expired")
    assert f"ciliate/state/identities/v1/id/{n}" in etcd.get_prefix("ciliate/state/identities/v1/id/")
