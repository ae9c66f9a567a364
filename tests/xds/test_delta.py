"""Incremental (delta) ADS protocol, driven through a fake stream."""

from __future__ import annotations

from envoy_data_plane.google.rpc import Status

from tests.xds.conftest import FakeStream
from tests.xds.fixtures import CLIENT_IDENTITY, rule, state
from xds.cache import SnapshotCache
from xds.delta import DeltaSession
from xds.render import Renderer, RenderParams
from xds.resources import CLUSTER, LISTENER, ROUTE
from xds.snapshot import Snapshot

R1, R2 = "ciliate-proxy-15001", "ciliate-proxy-15002"


def snap(paths: dict[int, str]) -> Snapshot:
    return Renderer(RenderParams()).render(state({p: (rule([CLIENT_IDENTITY], path=v),) for p, v in paths.items()}))


def names(resp) -> list[str]:
    return sorted(r.name for r in resp.resources)


async def connect(cache) -> FakeStream:
    s = FakeStream(DeltaSession, cache, delta=True)
    for t in (CLUSTER, LISTENER):
        s.push(type_url=t)
        r = await s.next()
        s.push(type_url=t, response_nonce=r.nonce)
    return s


async def test_wildcard_then_named_subscribe_and_ack():
    cache = SnapshotCache()
    v1 = snap({15001: "/a", 15002: "/b"})
    cache.set_snapshot("n1", v1)
    s = await connect(cache)
    assert cache.acked_version("n1") != v1.version, "routes not yet delivered"
    s.push(type_url=ROUTE, resource_names_subscribe=[R1, R2])
    r = await s.next()
    assert names(r) == [R1, R2] and all(x.version for x in r.resources)
    s.push(type_url=ROUTE, response_nonce=r.nonce)
    assert await s.quiet()
    assert cache.acked_version("n1") == v1.version
    await s.close()


async def test_change_sends_only_the_changed_resource():
    cache = SnapshotCache()
    cache.set_snapshot("n1", snap({15001: "/a", 15002: "/b"}))
    s = await connect(cache)
    s.push(type_url=ROUTE, resource_names_subscribe=[R1, R2])
    s.push(type_url=ROUTE, response_nonce=(await s.next()).nonce)
    cache.set_snapshot("n1", snap({15001: "/a", 15002: "/changed"}))
    r = await s.next()
    assert (r.type_url, names(r), r.removed_resources) == (ROUTE, [R2], [])
    assert await s.quiet()
    await s.close()


async def test_unsubscribe_and_removed_resources():
    cache = SnapshotCache()
    cache.set_snapshot("n1", snap({15001: "/a", 15002: "/b"}))
    s = await connect(cache)
    s.push(type_url=ROUTE, resource_names_subscribe=[R1, R2])
    s.push(type_url=ROUTE, response_nonce=(await s.next()).nonce)
    # Envoy drops interest in R1: nothing is sent for it, now or later.
    s.push(type_url=ROUTE, resource_names_unsubscribe=[R1])
    assert await s.quiet()
    # The second listener goes away: LDS names it removed; so does RDS for the subscribed route.
    cache.set_snapshot("n1", snap({15001: "/a2"}))
    lds = await s.next()
    assert (lds.type_url, lds.resources, lds.removed_resources) == (LISTENER, [], [R2])
    rds = await s.next()
    assert (rds.type_url, rds.resources, rds.removed_resources) == (ROUTE, [], [R2])
    assert await s.quiet(), "R1 changed but is unsubscribed"
    await s.close()


async def test_reconnect_with_initial_versions_sends_nothing_already_held():
    cache = SnapshotCache()
    v1 = snap({15001: "/a"})
    cache.set_snapshot("n1", v1)
    s = FakeStream(DeltaSession, cache, delta=True)
    held = {n: r.version for n, r in v1.of(LISTENER).items()}
    s.push(type_url=LISTENER, initial_resource_versions=held)
    assert await s.quiet()
    await s.close()


async def test_nack_is_recorded_and_not_resent():
    cache = SnapshotCache()
    cache.set_snapshot("n1", snap({15001: "/a"}))
    s = await connect(cache)
    s.push(type_url=ROUTE, resource_names_subscribe=[R1])
    s.push(type_url=ROUTE, response_nonce=(await s.next()).nonce)
    good = cache.acked_version("n1")
    cache.set_snapshot("n1", snap({15001: "/bad"}))
    r = await s.next()
    s.push(type_url=ROUTE, response_nonce=r.nonce, error_detail=Status(code=3, message="bad regex"))
    assert await s.quiet(0.2)
    assert cache.last_error("n1") == "bad regex"
    assert cache.acked_version("n1") == good
    await s.close()


async def test_first_request_without_node_is_ignored():
    cache = SnapshotCache()
    cache.set_snapshot("n1", snap({15001: "/a"}))
    s = FakeStream(DeltaSession, cache, delta=True)
    s.push(type_url=LISTENER, node=None)
    assert await s.quiet()
    await s.close()
