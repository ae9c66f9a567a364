"""The cache counts xDS responses, ACKs and NACKs per type URL, over both
protocols (what the agent exports as ciliate_xds_{pushes,acks,nacks}_total)."""

from __future__ import annotations

from envoy_data_plane.google.rpc import Status

from tests.xds import test_delta, test_sotw
from xds.cache import SnapshotCache
from xds.resources import CLUSTER, LISTENER, ROUTE


async def test_sotw_counts_each_response_ack_and_nack_by_type():
    cache = SnapshotCache()
    cache.set_snapshot("n1", test_sotw.snap({15001: "/a"}))
    s, _ = await test_sotw.connect(cache)  # CDS, LDS, RDS each sent once and ACKed
    c = cache.counters
    assert (c.pushes[CLUSTER], c.pushes[LISTENER], c.pushes[ROUTE]) == (1, 1, 1)
    assert (c.acks[CLUSTER], c.acks[LISTENER], c.acks[ROUTE]) == (1, 1, 1)
    assert not c.nacks
    cache.set_snapshot("n1", test_sotw.snap({15001: "/bad"}))
    r = await s.next()
    s.push(type_url=ROUTE, resource_names=["ciliate-proxy-15001"], response_nonce=r.nonce,
           version_info=r.version_info, error_detail=Status(code=3, message="invalid regex"))
    await s.quiet(0.2)
    assert (c.pushes[ROUTE], c.acks[ROUTE], c.nacks[ROUTE]) == (2, 1, 1)
    assert c.nacks[LISTENER] == 0
    await s.close()


async def test_delta_counts_each_response_ack_and_nack_by_type():
    cache = SnapshotCache()
    cache.set_snapshot("n1", test_delta.snap({15001: "/a"}))
    s = await test_delta.connect(cache)
    s.push(type_url=ROUTE, resource_names_subscribe=["ciliate-proxy-15001"])
    r = await s.next()
    s.push(type_url=ROUTE, response_nonce=r.nonce, error_detail=Status(code=3, message="bad"))
    await s.quiet(0.2)
    c = cache.counters
    assert (c.pushes[CLUSTER], c.acks[CLUSTER]) == (1, 1)
    assert (c.pushes[LISTENER], c.acks[LISTENER]) == (1, 1)
    assert (c.pushes[ROUTE], c.acks[ROUTE], c.nacks[ROUTE]) == (1, 0, 1)
    await s.close()
