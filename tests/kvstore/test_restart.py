"""An agent restarted with its state directory adopts its lease: same keys,
same identities, nothing deleted and re-created; what the previous run left
and this one does not re-declare goes after restore_grace."""

from __future__ import annotations

import asyncio
import json
import stat
from ipaddress import IPv4Address

import pytest

from tests.kvstore.support import connected, eventually

pytestmark = pytest.mark.etcd

X = frozenset({"k8s:app=x"})
Y = frozenset({"k8s:app=y"})
POD1 = IPv4Address("10.1.0.5")
POD2 = IPv4Address("10.1.0.6")


async def test_restart_adopts_the_saved_lease_without_churn(clusters, etcd):
    a = await clusters.node("a", lease_ttl=30.0)
    await connected(a)
    x = await a.cluster.allocate_identity(X)
    await a.cluster.set_endpoint(POD1, x)
    lease = a.cluster._session.lease_id
    await eventually(lambda: etcd.get_prefix("ciliate/state/nodes/v1/a"), what="node record published")
    lease_file = a.state_dir / "kvstore-lease.json"
    assert stat.S_IMODE(lease_file.stat().st_mode) == 0o600
    assert json.loads(lease_file.read_text())["lease_id"] == lease
    before = etcd.get_prefix("ciliate/state/")
    await clusters.stop(a)

    a2 = await clusters.node("a", info=a.info, state_dir=a.state_dir, lease_ttl=30.0)
    await connected(a2)
    assert a2.cluster._session.lease_id == lease
    assert a2.cluster.status()["lease_adopted"] is True
    assert await a2.cluster.allocate_identity(X) == x
    await a2.cluster.set_endpoint(POD1, x)
    await asyncio.sleep(0.3)  # let any reconcile run

    after = etcd.get_prefix("ciliate/state/")
    assert after.keys() == before.keys()
    for key, kv in before.items():
        assert after[key].create_revision == kv.create_revision, key  # never deleted and re-created
        assert after[key].lease == kv.lease, key
    # the node record and the endpoint were not even rewritten
    for key in ("ciliate/state/nodes/v1/a", f"ciliate/state/ip/v1/{POD1}"):
        assert after[key].mod_revision == before[key].mod_revision, key


async def test_leftovers_of_the_previous_run_go_after_the_restore_grace(clusters, etcd):
    a = await clusters.node("a", lease_ttl=30.0)
    await connected(a)
    x = await a.cluster.allocate_identity(X)
    y = await a.cluster.allocate_identity(Y)
    await a.cluster.set_endpoint(POD1, x)
    await a.cluster.set_endpoint(POD2, y)
    await clusters.stop(a)

    a2 = await clusters.node("a", info=a.info, state_dir=a.state_dir, lease_ttl=30.0, restore_grace=1.0)
    await connected(a2)
    assert await a2.cluster.allocate_identity(X) == x  # only X and POD1 are declared again
    await a2.cluster.set_endpoint(POD1, x)
    await asyncio.sleep(0.3)
    keys = etcd.get_prefix("ciliate/state/")
    assert f"ciliate/state/ip/v1/{POD2}" in keys  # within the grace: kept
    assert f"ciliate/state/identities/v1/refs/{y}/a" in keys

    def swept():
        keys = etcd.get_prefix("ciliate/state/")
        return f"ciliate/state/ip/v1/{POD2}" not in keys and f"ciliate/state/identities/v1/refs/{y}/a" not in keys

    await eventually(swept, timeout=30, what="leftovers deleted after the grace")
    keys = etcd.get_prefix("ciliate/state/")
    assert f"ciliate/state/ip/v1/{POD1}" in keys
    assert f"ciliate/state/identities/v1/refs/{x}/a" in keys
    assert "ciliate/state/nodes/v1/a" in keys


async def test_an_expired_saved_lease_is_replaced_and_the_state_published_again(clusters, etcd):
    a = await clusters.node("a", lease_ttl=1.0)
    await connected(a)
    x = await a.cluster.allocate_identity(X)
    await a.cluster.set_endpoint(POD1, x)
    old = a.cluster._session.lease_id
    await clusters.stop(a)
    await eventually(lambda: not etcd.get_prefix("ciliate/state/ip/"), timeout=30, what="old lease expired")
    assert etcd.lease_ttl(old) < 0

    a2 = await clusters.node("a", info=a.info, state_dir=a.state_dir, lease_ttl=30.0)
    await connected(a2)
    assert a2.cluster._session.lease_id != old
    assert a2.cluster.status()["lease_adopted"] is False
    assert await a2.cluster.allocate_identity(X) == x  # the id itself outlived the refs
    await a2.cluster.set_endpoint(POD1, x)
    keys = etcd.get_prefix("ciliate/state/")
    assert keys[f"ciliate/state/ip/v1/{POD1}"].lease == a2.cluster._session.lease_id


async def test_a_lease_file_of_another_node_is_not_adopted(clusters):
    a = await clusters.node("a", lease_ttl=30.0)
    await connected(a)
    await clusters.stop(a)
    b = await clusters.node("b", state_dir=a.state_dir, lease_ttl=30.0)
    await connected(b)
    assert b.cluster._session.lease_id != a.cluster._session.lease_id
    assert b.cluster.status()["lease_adopted"] is False
