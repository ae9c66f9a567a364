"""Upstream requests carry none of the proxy's internal headers, and a client
cannot pick the upstream by sending one.

Rendered as in production (OriginalDst.LOCAL_ADDRESS: every route writes the
accepted socket's local address into x-ciliate-original-dst, which the
ORIGINAL_DST cluster reads), except that the listeners bind 127.0.0.1 and
take the connection's addresses from a PROXY protocol line instead of the
kernel's TPROXY redirect: the line's destination is what
%DOWNSTREAM_LOCAL_ADDRESS% gives, as the pod's address is in production.
Raw requests over HTTP/1.1 and HTTP/2, through an ingress and an egress
listener, one Envoy for the module."""

from __future__ import annotations

import asyncio
import os

import pytest
import pytest_asyncio

from policy.compiled import HTTPRule
from tests.xds.conftest import free_port, running_rig
from tests.xds.fixtures import both_directions
from tests.xds.raw_http import PROTOCOLS
from xds import messages as pb
from xds.listener import ListenerFilter
from xds.render import ORIGINAL_DST_HEADER, PROXY_UPSTREAM_MARK, OriginalDst, Renderer, RenderParams
from xds.resources import LISTENER, Resource
from xds.serialize import any_
from xds.snapshot import Snapshot

pytestmark = [pytest.mark.envoy, pytest.mark.asyncio(loop_scope="module")]

PROXY_PROTOCOL = "envoy.filters.listener.proxy_protocol"
PROXY_PROTOCOL_URL = "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol"
# What the proxy itself adds. (A client's own x-envoy-original-dst-host is its
# data: production's cluster never reads it, and it reaches the upstream.)
INTERNAL = {ORIGINAL_DST_HEADER, "x-envoy-expected-rq-timeout-ms"}


def _with_proxy_protocol(snap: Snapshot) -> Snapshot:
    """TEST ONLY: every listener reads a PROXY protocol line first (a
    repeated field appended to an encoded message extends it)."""
    line = ListenerFilter.name(PROXY_PROTOCOL) + ListenerFilter.typed_config(any_(PROXY_PROTOCOL_URL, b""))
    out = []
    for by_name in snap.resources.values():
        for res in by_name.values():
            if res.type_url == LISTENER:
                res = Resource(LISTENER, res.name, res.body + pb.Listener.listener_filters(line), res.refs)
            out.append(res)
    return Snapshot.build(out)


def _proxy_line(dst_port: int) -> bytes:
    return f"PROXY TCP4 127.0.0.1 127.0.0.1 40000 {dst_port}\r\n".encode()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig():
    ports = {80: (free_port(), free_port(), HTTPRule(method="GET"))}
    params = RenderParams(
        listen_address="127.0.0.1", transparent=False, match_original_port=False, original_source=False,
        upstream_mark=PROXY_UPSTREAM_MARK if os.geteuid() == 0 else 0, original_dst=OriginalDst.LOCAL_ADDRESS,
    )
    decoy_hits: list[bytes] = []

    async def decoy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoy_hits.append(await reader.read(4096))
        writer.close()

    decoy_server = await asyncio.start_server(decoy, "127.0.0.1", 0)
    try:
        async with running_rig() as r:
            await r.publish_snapshot(_with_proxy_protocol(Renderer(params).render(both_directions(ports))))
            await r.envoy.wait_ready()
            yield r, {"ingress": ports[80][0], "egress": ports[80][1]}, decoy_server.sockets[0].getsockname()[1], decoy_hits
    finally:
        decoy_server.close()
        await decoy_server.wait_closed()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("direction", ["ingress", "egress"])
async def test_upstream_sees_no_internal_header_and_a_client_cannot_pick_it(rig, protocol, direction):
    r, ports, decoy_port, decoy_hits = rig
    before = len(r.upstream_seen)
    # The client names another upstream in every header that ever carried one.
    steer = [(ORIGINAL_DST_HEADER, f"127.0.0.1:{decoy_port}"), ("x-envoy-original-dst-host", f"127.0.0.1:{decoy_port}")]
    status, body = await PROTOCOLS[protocol](ports[direction], "/x", steer, preamble=_proxy_line(r.upstream_port))
    assert (status, body) == (200, "upstream GET /x")
    ((_, _, headers),) = r.upstream_seen[before:]
    assert {n.lower() for n, _ in headers} & INTERNAL == set(), headers
    assert decoy_hits == []
