"""Conntrack under pressure: one pod's SYN flood against everybody else's flows.

`ciliate_ct` is an LRU hash: an insert never fails, it evicts the least
recently used entry. A pod that sends SYNs nobody answers fills it; what must
hold for the other pods (README, Security notes):

- their new connections keep opening while the table is full;
- their established connections that exchange data keep working;
- the flood's entries die after the SYN-only lifetime (60 s), not the 6 h of
  an answered TCP flow, and the map fill says so: it counts live entries;
- a flow whose entries were evicted anyway heals on its next packet in either
  direction, also when the side that speaks first is one whose own policy
  would not let it open the flow (a server that may not connect out, a client
  that admits nothing in, the proxy's end of a redirected flow).

Eviction is simulated exactly (every entry deleted) where the test is about
healing; the flood test uses a real flood. Nothing here sleeps: lifetimes are
checked on the expiry the datapath stored, and every wait is a socket read
with a deadline.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from agent.adapters.kernel_datapath import KernelDatapath
from agent.core.map_pressure import conntrack_status
from policy.compiled import Verdict
from redirect import conntrack, counters, layout
from redirect.layout import EventVerdict, Reason
from redirect.maps import MapSizes
from tests.datapath.conftest import Install
from tests.datapath.support import (
    ALLOWED_WAIT,
    EGRESS,
    INGRESS,
    TCP,
    Server,
    endpoint,
    rule,
    state,
    syn_flood,
    tcp_connect,
)
from tests.datapath.test_redirect import PROXY_PORT, proxy_upstream, transparent_listener

pytestmark = pytest.mark.privileged

CT_SIZE = 4096  # entries; a flow takes two (one per direction)
FLOOD = 4 * CT_SIZE  # SYNs: eight times what the table holds
CHUNK = 1024
SILENT = IPv4Address("10.201.0.77")  # a world address the node blackholes: the flood gets no answer
WORLD = 2
SERVER_PORT = 8080


@pytest.fixture
def small_ct(fresh_install) -> Iterator[Install]:
    with fresh_install(attach=("a", "b", "c"), sizes=MapSizes(conntrack=CT_SIZE)) as inst:
        with inst.node.iproute() as ipr:
            ipr.route("add", dst=f"{SILENT}/32", type="blackhole")  # gone with the node's netns
        yield inst


def ping(x: socket.socket, y: socket.socket, data: bytes = b"p") -> None:
    """One message each way on an established connection (waits on the reads)."""
    x.sendall(data)
    assert y.recv(len(data)) == data
    y.sendall(data)
    assert x.recv(len(data)) == data


def ct_fill(inst: Install, now_ns: int | None = None) -> counters.MapFill:
    return next(f for f in counters.map_fill(inst.dp.maps, now_ns) if f.name == "ciliate_ct")


def flow_entries(inst: Install, a: socket.socket) -> list[conntrack.CtEntry]:
    """The entries of the TCP connection `a` is one end of (both directions)."""
    (lip, lport), (rip, rport) = a.getsockname(), a.getpeername()
    ends = {(IPv4Address(lip), lport), (IPv4Address(rip), rport)}
    return [e for e in conntrack.read(inst.dp.maps) if {(e.saddr, e.sport), (e.daddr, e.dport)} == ends]


def test_one_pods_syn_flood_leaves_other_pods_flows_working_and_dies_young(small_ct):
    inst = small_ct
    a, b, c = inst.ep("a"), inst.ep("b"), inst.ep("c")
    inst.dp.apply(state(1, [
        endpoint(a, [rule(WORLD, EGRESS, TCP, 80)]),  # a may open connections to the world's port 80
        endpoint(b, [rule(c.identity, EGRESS, TCP, SERVER_PORT)]),
        endpoint(c, [rule(b.identity, INGRESS, TCP, SERVER_PORT)]),  # c may not connect anywhere
    ]))
    with Server(c.pod, SERVER_PORT) as srv:
        busy = tcp_connect(b.pod, c.pod.ip, SERVER_PORT, ALLOWED_WAIT)
        assert busy is not None
        busy_peer = srv.accept()
        assert busy_peer is not None
        try:
            ping(busy, busy_peer)
            for first in range(1024, 1024 + FLOOD, CHUNK):
                assert syn_flood(a.pod, SILENT, 80, range(first, first + CHUNK)) == CHUNK
                # While the table is full: b's busy connection carries on...
                ping(busy, busy_peer, b"%d" % first)
                # ...and b's new connections open.
                new = tcp_connect(b.pod, c.pod.ip, SERVER_PORT, ALLOWED_WAIT)
                assert new is not None, f"b's new connection failed after {first - 1024 + CHUNK} SYNs"
                accepted = srv.accept()
                assert accepted is not None
                with new, accepted:
                    ping(new, accepted)

            fill = ct_fill(inst)
            assert fill.capacity == CT_SIZE
            assert fill.entries >= 0.9 * CT_SIZE, fill  # the flood is visible...
            kernel = asyncio.run(_kernel_counters(inst))
            st = conntrack_status(kernel)
            assert st is not None and st.percent >= 90 and st.warning  # ...in `ciliate status` too

            now = conntrack.clock_ns()
            entries = conntrack.read(inst.dp.maps)
            flood = [e for e in entries if SILENT in (e.saddr, e.daddr)]
            assert len(flood) >= 0.8 * CT_SIZE
            # Never answered: they live the SYN-only lifetime, not six hours.
            assert all(e.expires_ns <= now + layout.CT_LIFETIME_SYN_NS for e in flood), max(
                (e.expires_ns - now) / 1e9 for e in flood
            )
            busy_entries = flow_entries(inst, busy)
            assert len(busy_entries) == 2
            assert all(e.answered and e.expires_ns > now + layout.CT_LIFETIME_SYN_NS for e in busy_entries)
            # Once the SYN-only lifetime has passed, only b's busy connection is left.
            later = now + layout.CT_LIFETIME_SYN_NS + 1_000_000_000
            assert ct_fill(inst, later).entries == 2
            ping(busy, busy_peer)
        finally:
            busy.close()
            busy_peer.close()


async def _kernel_counters(inst: Install):
    """The agent's view of the same install (its datapath port adopts the pins)."""
    kd = KernelDatapath(inst.pin_dir, inst.state_dir)
    try:
        return await kd.counters()
    finally:
        await kd.close()


def _restored(stream) -> list:
    return [e for e in stream.drain() if e.verdict == EventVerdict.FORWARD and e.reason == Reason.CT_RESTORED]


def evicted_then(first: socket.socket, other: socket.socket, inst: Install) -> None:
    """Every conntrack entry gone (what the LRU does to an idle flow under a
    flood), then `first` speaks: its message must arrive, and the connection
    carries on both ways."""
    inst.dp.maps.flush_ct()
    first.sendall(b"late")
    assert other.recv(4) == b"late"
    ping(first, other)


@pytest.mark.parametrize("first", ["server", "client"])
@pytest.mark.parametrize(
    "server",
    [
        pytest.param("b", id="local-server-that-may-not-connect-out"),
        pytest.param("c", id="client-that-admits-nothing-in"),  # c: not an endpoint, its packets enter a at to_container
    ],
)
def test_an_evicted_flow_heals_whichever_end_speaks_first(dp_node, server, first):
    """a may connect to the server; a admits nothing in, b may not connect
    out: a packet from the server is only admissible as a reply."""
    a = dp_node.ep("a")
    peer = dp_node.node.pods[server]
    peer_identity = dp_node.ep("b").identity if server == "b" else WORLD
    eps = [endpoint(a, [rule(peer_identity, EGRESS, TCP, SERVER_PORT)], ingress=True)]
    if server == "b":
        eps.append(endpoint(dp_node.ep("b"), [rule(a.identity, INGRESS, TCP, SERVER_PORT)], egress=True))
    else:
        eps.append(endpoint(dp_node.ep("b"), [], ingress=False, egress=False))
    dp_node.dp.apply(state(1, eps))
    with Server(peer, SERVER_PORT) as srv, dp_node.dp.events() as stream:
        cl = tcp_connect(a.pod, peer.ip, SERVER_PORT, ALLOWED_WAIT)
        assert cl is not None
        sv = srv.accept()
        assert sv is not None
        with cl, sv:
            ping(cl, sv)
            stream.drain()
            speaker, listener = (sv, cl) if first == "server" else (cl, sv)
            evicted_then(speaker, listener, dp_node)
            restored = _restored(stream)
            # Only a reply needs the restore; the client's own packet is policed as usual.
            assert bool(restored) is (first == "server"), restored
            assert all(e.answered for e in flow_entries(dp_node, cl))


@pytest.mark.parametrize("first", ["proxy", "client"])
@pytest.mark.parametrize("a_ingress", [True, False], ids=["client-admits-nothing-in", "client-open"])
def test_an_evicted_redirected_flow_heals_and_stays_redirected(dp_node, a_ingress, first):
    """The proxy's answer on a redirected flow whose entries are gone reaches
    the client, and the client's packets still go to the proxy, never to the
    real server."""
    a, b = dp_node.ep("a"), dp_node.ep("b")
    dp_node.dp.apply(state(1, [
        endpoint(a, [rule(b.identity, EGRESS, TCP, 80, Verdict.REDIRECT, PROXY_PORT)], ingress=a_ingress),
        endpoint(b, [rule(a.identity, INGRESS, TCP, 80)], egress=True),
    ]))
    lst = transparent_listener(dp_node.node, PROXY_PORT)
    with Server(b.pod, 80) as real_server:
        c = tcp_connect(a.pod, b.pod.ip, 80, ALLOWED_WAIT)
        try:
            assert c is not None
            down, _ = lst.accept()
            with down:
                ping(c, down)
                speaker, listener = (down, c) if first == "proxy" else (c, down)
                evicted_then(speaker, listener, dp_node)
            assert not real_server.pending(0.1)
        finally:
            if c is not None:
                c.close()
            lst.close()


@pytest.mark.parametrize("first", ["server", "proxy"])
@pytest.mark.parametrize("b_egress", [True, False], ids=["server-may-not-connect-out", "server-open"])
def test_an_evicted_proxy_upstream_heals_and_answers_go_back_to_the_proxy(dp_node, b_egress, first):
    """The server's answer on the proxy's upstream connection (the client's
    address, original source) whose entries are gone goes back to the
    upstream socket: not dropped, not routed on to the client pod."""
    a, b = dp_node.ep("a"), dp_node.ep("b")
    dp_node.dp.apply(state(1, [
        endpoint(a, [], ingress=False, egress=False),
        endpoint(b, [rule(a.identity, INGRESS, TCP, SERVER_PORT)], egress=b_egress),
    ]))
    with Server(b.pod, SERVER_PORT) as srv:
        up = proxy_upstream(dp_node.node, str(a.pod.ip))
        up.settimeout(ALLOWED_WAIT)
        try:
            up.connect((str(b.pod.ip), SERVER_PORT))
            sv = srv.accept()
            assert sv is not None
            with sv:
                ping(up, sv)
                speaker, listener = (sv, up) if first == "server" else (up, sv)
                evicted_then(speaker, listener, dp_node)
        finally:
            up.close()


def test_an_ingress_redirect_through_lo_is_answered_once_the_proxy_has_the_connection(dp_node):
    """The proxy answers a client from the node without passing b's program,
    so the flow is marked answered (six hours, not the SYN-only minute) once
    the proxy's connection for it is established."""
    b = dp_node.ep("b")
    dp_node.dp.apply(state(1, [
        endpoint(dp_node.ep("a"), [], ingress=False, egress=False),
        endpoint(b, [rule(0, INGRESS, TCP, 80, Verdict.REDIRECT, PROXY_PORT)], egress=True),
    ]))
    lst = transparent_listener(dp_node.node, PROXY_PORT)
    c = tcp_connect(dp_node.node.pods["c"], b.pod.ip, 80, ALLOWED_WAIT)  # c: no program, enters b at to_container
    try:
        assert c is not None
        conn, _ = lst.accept()
        with conn:
            ping(c, conn)
            now = conntrack.clock_ns()
            entries = flow_entries(dp_node, c)
            assert entries and all(e.answered and e.expires_ns > now + layout.CT_LIFETIME_SYN_NS for e in entries)
    finally:
        if c is not None:
            c.close()
        lst.close()
