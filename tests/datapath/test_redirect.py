"""Transparent redirect to a proxy listener, and the proxy's own traffic.

The "proxy" is a plain IP_TRANSPARENT socket in the node netns on
127.0.0.1:<proxy port>, as Envoy's listener would be."""

from __future__ import annotations

import socket

import pytest

from policy.compiled import Verdict
from redirect import proxy_route as proxy
from redirect.layout import EventVerdict, Hook, Reason
from tests.datapath.support import (
    EGRESS,
    INGRESS,
    TCP,
    Server,
    endpoint,
    rule,
    state,
    tcp_connect,
)

pytestmark = pytest.mark.privileged

IP_TRANSPARENT = 19
PROXY_PORT = 15001


def transparent_listener(node, port: int) -> socket.socket:
    s = node.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    s.bind(("127.0.0.1", port))
    s.listen(8)
    s.settimeout(2.0)
    return s


@pytest.mark.parametrize(
    "a_entries, b_entries, direction",
    [
        pytest.param([rule(257, EGRESS, TCP, 80, Verdict.REDIRECT, PROXY_PORT)], [rule(256, INGRESS, TCP, 80)],
                     EGRESS, id="egress-redirect"),
        pytest.param([rule(257, EGRESS, TCP, 80)], [rule(256, INGRESS, TCP, 80, Verdict.REDIRECT, PROXY_PORT)],
                     INGRESS, id="ingress-redirect-of-local-destination"),
    ],
)
def test_redirect_reaches_transparent_listener_with_original_addresses(dp_node, a_entries, b_entries, direction):
    a, b = dp_node.ep("a"), dp_node.ep("b")
    assert proxy.is_set_up(dp_node.node.netns)
    dp_node.dp.apply(state(1, [endpoint(a, a_entries, ingress=False), endpoint(b, b_entries, egress=False)]))
    lst = transparent_listener(dp_node.node, PROXY_PORT)
    with Server(b.pod, 80) as real_server, dp_node.dp.events() as stream:
        stream.drain()
        c = tcp_connect(a.pod, b.pod.ip, 80, 2.0)
        try:
            assert c is not None, "redirected connection did not complete"
            conn, peer = lst.accept()
            with conn:
                # The proxy sees the original destination and source.
                assert conn.getsockname() == (str(b.pod.ip), 80)
                assert peer == (str(a.pod.ip), c.getsockname()[1])
                c.sendall(b"GET")
                assert conn.recv(3) == b"GET"
                conn.sendall(b"200")  # proxy -> client, spoofing b
                assert c.recv(3) == b"200"
                c.sendall(b"more")  # a redirected flow stays redirected
                assert conn.recv(4) == b"more"
            assert not real_server.pending(0.1)
        finally:
            if c is not None:
                c.close()
            lst.close()
        ev = [e for e in stream.drain() if e.verdict == EventVerdict.REDIRECT]
    assert ev and ev[0].proxy_port == PROXY_PORT and ev[0].direction == direction


def test_redirect_without_listener_drops_with_reason(dp_node):
    a, b = dp_node.ep("a"), dp_node.ep("b")
    dp_node.dp.apply(state(1, [
        endpoint(a, [rule(257, EGRESS, TCP, 80, Verdict.REDIRECT, PROXY_PORT + 1)], ingress=False),
        endpoint(b, [], ingress=False, egress=False),
    ]))
    with Server(b.pod, 80) as srv, dp_node.dp.events() as stream:
        stream.drain()
        assert tcp_connect(a.pod, b.pod.ip, 80, 0.4) is None
        assert not srv.pending(0.1)
        drops = [e for e in stream.drain() if e.verdict == EventVerdict.DROP]
    assert drops and drops[0].reason == Reason.PROXY_NOT_LISTENING


def proxy_upstream(node, source_ip: str | None) -> socket.socket:
    """A socket as Envoy's upstream opens it: SO_MARK 0x0B00 (agreement with
    xds/), and with source_ip bound with IP_TRANSPARENT, as the original_src
    filter does (the client's address; the port is the kernel's)."""
    s = node.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 0x0B00)
    if source_ip is not None:
        s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        s.bind((source_ip, 0))
    return s


@pytest.mark.parametrize(
    "b_ingress, source, expect",
    [
        pytest.param([rule(256, INGRESS, TCP, 8080)], "a", True, id="client-address-allowed"),
        pytest.param([rule(256, INGRESS, TCP, 8080, Verdict.REDIRECT, PROXY_PORT)], "a", True,
                     id="client-address-redirect-verdict-passes"),
        pytest.param([rule(258, INGRESS, TCP, 8080)], "a", False, id="client-address-denied-by-receiver"),
        pytest.param([rule(1, INGRESS, TCP, 8080)], "node", True, id="node-address-allowed"),
        pytest.param([], "node", False, id="node-address-denied-by-receiver"),
    ],
)
def test_proxy_upstream_is_policed_as_its_source_and_replies_come_back_to_it(dp_node, b_ingress, source, expect):
    """The proxy's upstream connection keeps the client's address: b sees a's
    address, b's ingress L3/L4 policy judges a's identity (the mark no longer
    bypasses it), and b's replies, addressed to a, reach the proxy's socket
    in the node instead of a's veth."""
    a, b = dp_node.ep("a"), dp_node.ep("b")
    dp_node.dp.apply(state(1, [endpoint(a, [], ingress=False, egress=False), endpoint(b, b_ingress, egress=False)]))
    with Server(b.pod, 8080) as srv, dp_node.dp.events() as stream:
        stream.drain()
        s = proxy_upstream(dp_node.node, str(a.pod.ip) if source == "a" else None)
        try:
            s.settimeout(2.0 if expect else 0.4)
            try:
                s.connect((str(b.pod.ip), 8080))
                connected = True
            except OSError:
                connected = False
            assert connected is expect
            conn = srv.accept(2.0 if expect else 0.1)
            assert (conn is not None) is expect
            if conn is not None:
                with conn:
                    want = str(a.pod.ip) if source == "a" else None
                    if want:
                        assert conn.getpeername() == s.getsockname()  # b sees a's address
                        assert s.getsockname()[0] == want
                    for _ in range(3):  # keep-alive: every reply takes the same way back
                        s.sendall(b"x")
                        assert conn.recv(1) == b"x"
                        conn.sendall(b"y")
                        assert s.recv(1) == b"y"
        finally:
            s.close()
        events = stream.drain()
    fwd = [e for e in events if e.verdict == EventVerdict.FORWARD and e.reason == Reason.PROXY_ORIGINATED]
    drops = [e for e in events if e.verdict == EventVerdict.DROP]
    if expect:
        assert fwd and fwd[0].src_identity == (a.identity if source == "a" else 1), events
    else:
        assert not fwd and drops and drops[0].dst_identity == b.identity, events


def test_proxy_upstream_sharing_a_tracked_flows_tuple_keeps_both_apart(dp_node):
    """An upstream bound to a's address may get the same port as a flow the
    node tracks at a's veth (a's own connection to the proxy): the two are
    tracked apart, a's packets still go to the proxy and b's replies to the
    upstream socket."""
    a, b = dp_node.ep("a"), dp_node.ep("b")
    dp_node.dp.apply(state(1, [
        endpoint(a, [rule(257, EGRESS, TCP, 8080, Verdict.REDIRECT, PROXY_PORT)], ingress=False),
        endpoint(b, [rule(256, INGRESS, TCP, 8080)], egress=False),
    ]))
    lst = transparent_listener(dp_node.node, PROXY_PORT)
    with Server(b.pod, 8080) as srv:
        c = tcp_connect(a.pod, b.pod.ip, 8080, 2.0)
        assert c is not None
        down, _ = lst.accept()
        s = dp_node.node.socket()
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 0x0B00)
            s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            s.bind(c.getsockname())  # the worst case: a's own source port
            s.settimeout(2.0)
            s.connect((str(b.pod.ip), 8080))
            up = srv.accept(2.0)
            assert up is not None
            with up, down:
                for _ in range(3):
                    c.sendall(b"q")
                    assert down.recv(1) == b"q"
                    s.sendall(b"x")
                    assert up.recv(1) == b"x"
                    up.sendall(b"y")
                    assert s.recv(1) == b"y"
                    down.sendall(b"r")
                    assert c.recv(1) == b"r"
        finally:
            s.close()
            c.close()
            lst.close()


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("node", id="from-the-node"),
        pytest.param("unmanaged-pod", id="from-an-unmanaged-pod"),
    ],
)
def test_ingress_redirect_of_traffic_not_from_an_endpoint_goes_through_lo(dp_node, source):
    """Packets reach b's to_container already routed; they go to the proxy
    through lo (bpf_lo.c assigns the socket there)."""
    b = dp_node.ep("b")
    dp_node.dp.apply(state(1, [
        endpoint(dp_node.ep("a"), [], ingress=False, egress=False),
        endpoint(b, [rule(0, INGRESS, TCP, 80, Verdict.REDIRECT, PROXY_PORT)], egress=True),
    ]))
    lst = transparent_listener(dp_node.node, PROXY_PORT)
    with Server(b.pod, 80) as real_server, dp_node.dp.events() as stream:
        stream.drain()
        if source == "node":
            c = dp_node.node.socket()
            c.settimeout(2.0)
            c.connect((str(b.pod.ip), 80))
        else:
            c = tcp_connect(dp_node.node.pods["c"], b.pod.ip, 80, 2.0)
            assert c is not None
        try:
            conn, peer = lst.accept()
            with conn:
                assert conn.getsockname() == (str(b.pod.ip), 80)
                assert peer == c.getsockname()
                c.sendall(b"GET")
                assert conn.recv(3) == b"GET"
                conn.sendall(b"200")
                assert c.recv(3) == b"200"
                c.sendall(b"more")
                assert conn.recv(4) == b"more"
            assert not real_server.pending(0.1)
        finally:
            c.close()
            lst.close()
        ev = [e for e in stream.drain() if e.verdict == EventVerdict.REDIRECT]
    assert ev and ev[0].hook == Hook.TO_ENDPOINT and ev[0].proxy_port == PROXY_PORT


IP_RECVORIGDSTADDR = 20
UDP_PROXY_PORT = 15053


def test_udp_redirect_reaches_the_proxy_socket_with_the_original_destination_and_its_answer_returns(dp_node):
    """A DNS rule's UDP redirect: the datagram goes to the proxy's unconnected
    transparent socket (never to the real server), which reads the original
    destination from IP_RECVORIGDSTADDR; the answer, sent from a transparent
    socket bound to that destination, reaches the client as the server's."""
    from policy.compiled import Protocol

    UDP = Protocol.UDP
    a, b = dp_node.ep("a"), dp_node.ep("b")
    dp_node.dp.apply(state(1, [endpoint(a, [rule(257, EGRESS, UDP, 53, Verdict.REDIRECT, UDP_PROXY_PORT)], ingress=False),
                               endpoint(b, [rule(256, INGRESS, UDP, 53)], egress=False)]))
    lst = dp_node.node.socket(socket.SOCK_DGRAM)
    lst.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    lst.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
    lst.bind(("127.0.0.1", UDP_PROXY_PORT))
    lst.settimeout(2.0)
    real = b.pod.socket(socket.SOCK_DGRAM)
    real.bind(("0.0.0.0", 53))
    client = a.pod.socket(socket.SOCK_DGRAM)
    client.settimeout(2.0)
    answer = dp_node.node.socket(socket.SOCK_DGRAM)
    try:
        with dp_node.dp.events() as stream:
            stream.drain()
            client.sendto(b"query-1", (str(b.pod.ip), 53))
            data, anc, _flags, src = lst.recvmsg(512, socket.CMSG_SPACE(16))
            assert data == b"query-1" and src == (str(a.pod.ip), client.getsockname()[1])
            [(level, kind, raw)] = anc
            assert (level, kind) == (socket.SOL_IP, IP_RECVORIGDSTADDR)
            assert int.from_bytes(raw[2:4], "big") == 53 and socket.inet_ntoa(raw[4:8]) == str(b.pod.ip)
            answer.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            answer.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            answer.bind((str(b.pod.ip), 53))
            answer.sendto(b"answer-1", src)
            assert client.recvfrom(64) == (b"answer-1", (str(b.pod.ip), 53))
            client.sendto(b"query-2", (str(b.pod.ip), 53))  # the flow stays redirected
            assert lst.recvfrom(64)[0] == b"query-2"
            real.setblocking(False)
            with pytest.raises(BlockingIOError):
                real.recvfrom(64)
            ev = [e for e in stream.drain() if e.verdict == EventVerdict.REDIRECT]
        assert ev and ev[0].proxy_port == UDP_PROXY_PORT
    finally:
        for s in (lst, real, client, answer):
            s.close()


def test_udp_redirect_without_a_proxy_socket_drops_with_reason(dp_node):
    from policy.compiled import Protocol

    a, b = dp_node.ep("a"), dp_node.ep("b")
    dp_node.dp.apply(state(1, [endpoint(a, [rule(257, EGRESS, Protocol.UDP, 53, Verdict.REDIRECT, UDP_PROXY_PORT)],
                                        ingress=False), endpoint(b, [rule(256, INGRESS, Protocol.UDP, 53)], egress=False)]))
    real = b.pod.socket(socket.SOCK_DGRAM)
    real.bind(("0.0.0.0", 53))
    real.settimeout(0.3)
    client = a.pod.socket(socket.SOCK_DGRAM)
    try:
        with dp_node.dp.events() as stream:
            stream.drain()
            client.sendto(b"q", (str(b.pod.ip), 53))
            with pytest.raises(socket.timeout):
                real.recvfrom(64)
            drops = [e for e in stream.drain() if e.verdict == EventVerdict.DROP]
        assert any(e.reason == Reason.PROXY_NOT_LISTENING for e in drops)
    finally:
        real.close()
        client.close()


def test_a_udp_flows_redirect_follows_the_current_policy_both_ways(dp_node):
    """A DNS rule that arrives after the pod opened its socket redirects the
    next datagram on that socket; once the rule goes, the next one reaches
    the server again (a redirect is not kept for the tuple's life)."""
    from policy.compiled import Protocol

    UDP = Protocol.UDP
    a, b = dp_node.ep("a"), dp_node.ep("b")
    plain = [endpoint(a, [rule(257, EGRESS, UDP, 53)], ingress=False), endpoint(b, [rule(256, INGRESS, UDP, 53)], egress=False)]
    redirected = [endpoint(a, [rule(257, EGRESS, UDP, 53, Verdict.REDIRECT, UDP_PROXY_PORT)], ingress=False),
                  endpoint(b, [rule(256, INGRESS, UDP, 53)], egress=False)]
    lst = dp_node.node.socket(socket.SOCK_DGRAM)
    lst.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    lst.bind(("127.0.0.1", UDP_PROXY_PORT))
    lst.settimeout(2.0)
    real = b.pod.socket(socket.SOCK_DGRAM)
    real.bind(("0.0.0.0", 53))
    real.settimeout(2.0)
    client = a.pod.socket(socket.SOCK_DGRAM)
    client.settimeout(2.0)
    dst = (str(b.pod.ip), 53)
    try:
        dp_node.dp.apply(state(1, plain))
        client.sendto(b"one", dst)
        assert real.recvfrom(64)[0] == b"one"
        dp_node.dp.apply(state(2, redirected))
        client.sendto(b"two", dst)  # the same socket, the same tuple
        assert lst.recvfrom(64)[0] == b"two", "the redirect added since applies to the tracked flow"
        dp_node.dp.apply(state(3, plain))
        client.sendto(b"three", dst)
        assert real.recvfrom(64)[0] == b"three", "a removed redirect no longer holds the flow"
        lst.setblocking(False)
        with pytest.raises(BlockingIOError):
            lst.recvfrom(64)
    finally:
        for s in (lst, real, client):
            s.close()
