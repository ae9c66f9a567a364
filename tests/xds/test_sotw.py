"""State-of-the-world ADS protocol, driven through a fake stream."""

from __future__ import annotations

import pytest
from envoy_data_plane.google.rpc import Status

from tests.xds.conftest import FakeStream
from tests.xds.fixtures import CLIENT_IDENTITY, rule, state
from xds.cache import SnapshotCache
from xds.errors import NackError
from xds.render import Renderer, RenderParams
from xds.resources import CLUSTER, LISTENER, ROUTE, Resource
from xds.snapshot import Snapshot
from xds.sotw import SotwSession


def snap(paths: dict[int, str]) -> Snapshot:
    return Renderer(RenderParams()).render(state({p: (rule([CLIENT_IDENTITY], path=v),) for p, v in paths.items()}))


async def connect(cache: SnapshotCache) -> tuple[FakeStream, dict]:
    """Envoy's start-up: CDS and LDS wildcard, then RDS for what LDS named; all ACKed."""
    s = FakeStream(SotwSession, cache)
    s.push(type_url=CLUSTER)
    cds = await s.next()
    s.push(type_url=LISTENER)
    lds = await s.next()
    s.push(type_url=CLUSTER, version_info=cds.version_info, response_nonce=cds.nonce)
    s.push(type_url=LISTENER, version_info=lds.version_info, response_nonce=lds.nonce)
    names = sorted(route_names(lds))
    s.push(type_url=ROUTE, resource_names=names)
    rds = await s.next()
    s.push(type_url=ROUTE, resource_names=names, version_info=rds.version_info, response_nonce=rds.nonce)
    assert await s.quiet()
    return s, {CLUSTER: cds, LISTENER: lds, ROUTE: rds}


def route_names(lds) -> set[str]:
    from envoy_data_plane.envoy.config.listener.v3 import Listener

    return {Listener.parse(a.value).name for a in lds.resources}


async def test_initial_exchange_sends_each_type_once_and_acks_the_version():
    cache = SnapshotCache()
    v1 = snap({15001: "/a"})
    cache.set_snapshot("n1", v1)
    s, got = await connect(cache)
    assert [len(got[t].resources) for t in (CLUSTER, LISTENER, ROUTE)] == [1, 1, 1]
    assert {got[t].version_info for t in got} == {v1.version}
    assert len({got[t].nonce for t in got}) == 3, "every response has its own nonce"
    assert cache.acked_version("n1") == v1.version
    await s.close()


async def test_policy_change_resends_only_the_route_configuration():
    cache = SnapshotCache()
    cache.set_snapshot("n1", snap({15001: "/a", 15002: "/b"}))
    s, _ = await connect(cache)
    v2 = snap({15001: "/a", 15002: "/changed"})
    cache.set_snapshot("n1", v2)
    r = await s.next()
    assert r.type_url == ROUTE, "listeners and clusters did not change and must not be re-sent"
    assert await s.quiet()
    s.push(type_url=ROUTE, resource_names=["ciliate-proxy-15001", "ciliate-proxy-15002"], response_nonce=r.nonce, version_info=r.version_info)
    await s.quiet()
    assert cache.acked_version("n1") == v2.version
    await s.close()


async def test_stale_nonce_is_ignored():
    cache = SnapshotCache()
    cache.set_snapshot("n1", snap({15001: "/a"}))
    s, got = await connect(cache)
    v2 = snap({15001: "/b"})
    cache.set_snapshot("n1", v2)
    r = await s.next()
    # A request carrying the previous RDS nonce (and even an error) is stale: no NACK recorded, no ACK.
    s.push(type_url=ROUTE, resource_names=["ciliate-proxy-15001"], response_nonce=got[ROUTE].nonce,
           error_detail=Status(code=3, message="stale complaint"))
    assert await s.quiet()
    assert cache.last_error("n1") is None
    assert cache.acked_version("n1") != v2.version
    s.push(type_url=ROUTE, resource_names=["ciliate-proxy-15001"], response_nonce=r.nonce)
    await s.quiet()
    assert cache.acked_version("n1") == v2.version
    await s.close()


async def test_nack_is_recorded_last_good_stays_and_nothing_is_resent_in_a_loop():
    cache = SnapshotCache()
    v1 = snap({15001: "/a"})
    cache.set_snapshot("n1", v1)
    s, _ = await connect(cache)
    bad = snap({15001: "/bad"})
    cache.set_snapshot("n1", bad)
    r = await s.next()
    s.push(type_url=ROUTE, resource_names=["ciliate-proxy-15001"], response_nonce=r.nonce,
           version_info=v1.version, error_detail=Status(code=3, message="invalid regex"))
    assert await s.quiet(0.2), "a NACK must not be answered by re-sending the rejected config (go-control-plane #962)"
    assert cache.last_error("n1") == "invalid regex"
    assert cache.acked_version("n1") == v1.version
    with pytest.raises(NackError) as e:
        await cache.wait_for_ack("n1", bad.version, 1)
    assert (e.value.type_url, e.value.resource_names) == (ROUTE, ("ciliate-proxy-15001",))
    # A further request with the same nonce (Envoy re-asking) is not answered with the same bytes either.
    s.push(type_url=ROUTE, resource_names=["ciliate-proxy-15001"], response_nonce=r.nonce, version_info=v1.version)
    assert await s.quiet()
    # A different snapshot is sent, and its ACK clears the error.
    v3 = snap({15001: "/fixed"})
    cache.set_snapshot("n1", v3)
    r3 = await s.next()
    assert r3.version_info == v3.version
    s.push(type_url=ROUTE, resource_names=["ciliate-proxy-15001"], response_nonce=r3.nonce, version_info=v3.version)
    await cache.wait_for_ack("n1", v3.version, 1)
    assert cache.last_error("n1") is None
    await s.close()


async def test_new_listener_goes_out_after_clusters_and_before_its_routes():
    cache = SnapshotCache()
    cache.set_snapshot("n1", snap({15001: "/a"}))
    s, _ = await connect(cache)
    cache.set_snapshot("n1", snap({15001: "/a", 15002: "/b"}))
    lds = await s.next()
    assert lds.type_url == LISTENER and len(lds.resources) == 2
    assert await s.quiet(), "the new route configuration waits until Envoy asks for it by name"
    s.push(type_url=LISTENER, response_nonce=lds.nonce)
    s.push(type_url=ROUTE, resource_names=["ciliate-proxy-15001", "ciliate-proxy-15002"], response_nonce=(await _last_rds_nonce(s)))
    rds = await s.next()
    from envoy_data_plane.envoy.config.route.v3 import RouteConfiguration

    assert rds.type_url == ROUTE
    assert [RouteConfiguration.parse(a.value).name for a in rds.resources] == ["ciliate-proxy-15002"]
    await s.close()


async def _last_rds_nonce(s: FakeStream) -> str:
    return s.session.types[ROUTE].sent_nonce


async def test_cluster_removal_waits_until_no_acked_listener_uses_it():
    """Make-before-break: the route configurations Envoy runs still name the
    old cluster, so CDS keeps it until Envoy ACKs routes that do not."""
    cache = SnapshotCache()
    old = snap({15001: "/a"})
    cache.set_snapshot("n1", old)
    s, _ = await connect(cache)
    new = Renderer(RenderParams(cluster_name="renamed")).render(state({15001: (rule([CLIENT_IDENTITY], path="/a"),)}))
    cache.set_snapshot("n1", new)
    cds = await s.next()
    assert cds.type_url == CLUSTER
    assert sorted(_cluster_names(cds)) == ["ciliate-original-dst", "renamed"], "old cluster held while in use"
    s.push(type_url=CLUSTER, response_nonce=cds.nonce)
    rds = await s.next()
    assert rds.type_url == ROUTE
    s.push(type_url=ROUTE, resource_names=["ciliate-proxy-15001"], response_nonce=rds.nonce)
    cds2 = await s.next()
    assert cds2.type_url == CLUSTER and _cluster_names(cds2) == ["renamed"]
    s.push(type_url=CLUSTER, response_nonce=cds2.nonce)
    await s.quiet()
    assert cache.acked_version("n1") == new.version
    await s.close()


def _cluster_names(resp) -> list[str]:
    from envoy_data_plane.envoy.config.cluster.v3 import Cluster

    return [Cluster.parse(a.value).name for a in resp.resources]


async def test_streams_of_different_nodes_get_their_own_snapshots():
    cache = SnapshotCache()
    cache.set_snapshot("n1", snap({15001: "/a"}))
    cache.set_snapshot("n2", snap({15001: "/a", 15002: "/b"}))
    s1, s2 = FakeStream(SotwSession, cache), FakeStream(SotwSession, cache)
    from envoy_data_plane.envoy.config.core.v3 import Node

    s1.push(type_url=LISTENER)
    s2.push(type_url=LISTENER, node=Node(id="n2"))
    assert len((await s1.next()).resources) == 1
    assert len((await s2.next()).resources) == 2
    await s1.close()
    await s2.close()


async def test_no_snapshot_yet_means_envoy_waits_then_gets_it():
    cache = SnapshotCache()
    s = FakeStream(SotwSession, cache)
    s.push(type_url=LISTENER)
    assert await s.quiet()
    cache.set_snapshot("n1", snap({15001: "/a"}))
    assert (await s.next()).type_url == LISTENER
    await s.close()


def test_resource_version_is_a_content_digest():
    a = Resource(ROUTE, "r", b"\x0a\x01r")
    assert a.version == Resource(ROUTE, "r", b"\x0a\x01r").version
    assert a.version != Resource(ROUTE, "r", b"\x0a\x01s").version


async def test_route_change_carries_only_the_changed_route_configuration():
    cache = SnapshotCache()
    cache.set_snapshot("n1", snap({15001: "/a", 15002: "/b"}))
    s, got = await connect(cache)
    assert len(got[ROUTE].resources) == 2
    cache.set_snapshot("n1", snap({15001: "/a", 15002: "/changed"}))
    r = await s.next()
    from envoy_data_plane.envoy.config.route.v3 import RouteConfiguration

    assert [RouteConfiguration.parse(a.value).name for a in r.resources] == ["ciliate-proxy-15002"]
    await s.close()


async def test_listener_removal_is_acked_while_envoy_still_subscribes_to_its_routes():
    """Envoy keeps a removed listener draining (seconds) and stays subscribed
    to its route configuration meanwhile. The snapshot without that listener
    is in force once Envoy ACKs the listeners: waiting for the unsubscribe
    would stall every change queued behind the removal for the drain time."""
    cache = SnapshotCache()
    cache.set_snapshot("n1", snap({15001: "/a", 15002: "/b"}))
    s, _ = await connect(cache)
    smaller = snap({15001: "/a"})
    cache.set_snapshot("n1", smaller)
    lds = await s.next()
    assert lds.type_url == LISTENER and len(lds.resources) == 1
    s.push(type_url=LISTENER, version_info=lds.version_info, response_nonce=lds.nonce)
    assert await s.quiet(), "a route configuration that only went away is not re-sent"
    assert cache.acked_version("n1") == smaller.version
    # The drain ends: Envoy unsubscribes, nothing changes.
    s.push(type_url=ROUTE, resource_names=["ciliate-proxy-15001"], response_nonce=await _last_rds_nonce(s))
    assert await s.quiet()
    assert cache.acked_version("n1") == smaller.version
    await s.close()


async def test_a_changed_route_configuration_still_needs_its_own_ack():
    cache = SnapshotCache()
    cache.set_snapshot("n1", snap({15001: "/a", 15002: "/b"}))
    s, _ = await connect(cache)
    back = snap({15001: "/a", 15002: "/new"})
    cache.set_snapshot("n1", back)
    rds = await s.next()
    assert rds.type_url == ROUTE
    assert cache.acked_version("n1") != back.version, "the changed route configuration is not ACKed yet"
    s.push(type_url=ROUTE, resource_names=["ciliate-proxy-15001", "ciliate-proxy-15002"], response_nonce=rds.nonce, version_info=rds.version_info)
    await s.quiet()
    assert cache.acked_version("n1") == back.version
    await s.close()
