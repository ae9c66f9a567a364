"""L3/L4 verdicts on real traffic between pods in network namespaces.

Pods a and b are endpoints with programs attached; c is an unmanaged pod
(no program), reachable as a CIDR peer. Every denied flow is checked from
the server's side (the connection never arrives) and by its drop event."""

from __future__ import annotations

import subprocess

import pytest

from policy.compiled import Verdict
from redirect.layout import EventVerdict, Reason
from tests.datapath.support import (
    ANY,
    EGRESS,
    INGRESS,
    TCP,
    UDP,
    Server,
    endpoint,
    rule,
    state,
    tcp_connect,
    tcp_flow_passes,
    udp_roundtrip,
)

pytestmark = pytest.mark.privileged


def _drops(stream) -> list:
    return [e for e in stream.drain() if e.verdict == EventVerdict.DROP]


@pytest.mark.parametrize(
    "a_egress, b_ingress, port, expect",
    [
        pytest.param([rule(257, EGRESS, TCP, 8080)], [rule(256, INGRESS, TCP, 8080)], 8080, True, id="both-allow"),
        pytest.param([rule(257, EGRESS, TCP, 8080)], [], 8080, False, id="dst-ingress-missing"),
        pytest.param([], [rule(256, INGRESS, TCP, 8080)], 8080, False, id="src-egress-missing"),
        pytest.param([rule(257, EGRESS, TCP, 8080)], [rule(256, INGRESS, TCP, 8080)], 8081, False, id="other-port"),
        pytest.param([rule(0, EGRESS, ANY)], [rule(0, INGRESS, ANY)], 9000, True, id="l3-any-peer"),
        pytest.param(
            [rule(0, EGRESS, ANY), rule(257, EGRESS, TCP, 9000, Verdict.DENY)],
            [rule(0, INGRESS, ANY)], 9000, False, id="deny-beats-allow",
        ),
        pytest.param([rule(258, EGRESS, TCP, 8080)], [rule(256, INGRESS, TCP, 8080)], 8080, False, id="wrong-peer-identity"),
    ],
)
def test_tcp_verdict_between_local_endpoints(dp_node, a_egress, b_ingress, port, expect):
    a, b = dp_node.ep("a"), dp_node.ep("b")
    dp_node.dp.apply(state(1, [endpoint(a, a_egress, ingress=False), endpoint(b, b_ingress, egress=False)]))
    with dp_node.dp.events() as stream:
        stream.drain()
        assert tcp_flow_passes(a.pod, b.pod, port, expect) is expect
        drops = _drops(stream)
    if not expect:
        assert drops and drops[0].dport == port and drops[0].src_identity == 256


def test_replies_of_allowed_flow_pass_but_reverse_is_denied(dp_node):
    a, b = dp_node.ep("a"), dp_node.ep("b")
    # b is enforced in both directions and allows nothing outwards: only
    # conntrack lets its replies out.
    dp_node.dp.apply(state(1, [
        endpoint(a, [rule(257, EGRESS, TCP, 8080)], ingress=True),
        endpoint(b, [rule(256, INGRESS, TCP, 8080)], egress=True),
    ]))
    assert tcp_flow_passes(a.pod, b.pod, 8080, True)
    assert udp_roundtrip(a.pod, b.pod, 8080, False) == (False, False)
    assert not tcp_flow_passes(b.pod, a.pod, 8080, False)


def test_udp_allowed_with_reply_and_denied_on_other_port(dp_node):
    a, b = dp_node.ep("a"), dp_node.ep("b")
    dp_node.dp.apply(state(1, [
        endpoint(a, [rule(257, EGRESS, UDP, 5353)], ingress=True),
        endpoint(b, [rule(256, INGRESS, UDP, 5353)], egress=True),
    ]))
    assert udp_roundtrip(a.pod, b.pod, 5353, True) == (True, True)
    assert udp_roundtrip(a.pod, b.pod, 5354, False) == (False, False)
    # A TCP rule on the same port does not admit UDP and vice versa.
    assert not tcp_flow_passes(a.pod, b.pod, 5353, False)


@pytest.mark.parametrize(
    "port, expect",
    [
        pytest.param(8000, True, id="range-start"),
        pytest.param(8077, True, id="inside"),
        pytest.param(8100, True, id="range-end"),
        pytest.param(7999, False, id="below"),
        pytest.param(8101, False, id="above"),
    ],
)
def test_port_range(dp_node, port, expect):
    a, b = dp_node.ep("a"), dp_node.ep("b")
    dp_node.dp.apply(state(1, [
        endpoint(a, [rule(257, EGRESS, TCP, (8000, 8100))], ingress=False),
        endpoint(b, [], ingress=False, egress=False),
    ]))
    assert tcp_flow_passes(a.pod, b.pod, port, expect) is expect


def test_cidr_peer_identity_from_ipcache(dp_node):
    a, c = dp_node.ep("a"), dp_node.node.pods["c"]
    cidr_identity = (1 << 24) + 5
    # c (10.201.0.9, unmanaged) falls in 10.201.0.8/29: a CIDR identity.
    dp_node.dp.apply(state(1, [
        endpoint(a, [rule(cidr_identity, EGRESS, TCP, 8080)], ingress=False),
        endpoint(dp_node.ep("b"), [], ingress=False, egress=False),
    ], extra_ipcache={"10.201.0.8/29": cidr_identity}))
    with dp_node.dp.events() as stream:
        stream.drain()
        assert tcp_flow_passes(a.pod, c, 8080, True)
        fwd = [e for e in stream.drain() if e.verdict == EventVerdict.FORWARD]
    assert fwd[0].dst_identity == cidr_identity and fwd[0].reason == Reason.POLICY_ALLOW
    # b is outside the /29: its own /32 identity, which the rule does not name.
    assert not tcp_flow_passes(a.pod, dp_node.node.pods["b"], 8080, False)
    # The prefix moves to another identity: the same peer is now denied.
    dp_node.dp.apply(state(2, [
        endpoint(a, [rule(cidr_identity, EGRESS, TCP, 8080)], ingress=False),
        endpoint(dp_node.ep("b"), [], ingress=False, egress=False),
    ], extra_ipcache={"10.201.0.8/29": cidr_identity + 1}))
    assert not tcp_flow_passes(a.pod, c, 8080, False)


def test_ingress_from_unmanaged_peer_is_decided_at_destination(dp_node):
    """c has no program: its packets are policed by b's to-container hook."""
    b, c = dp_node.ep("b"), dp_node.node.pods["c"]
    cidr_identity = (1 << 24) + 7
    dp_node.dp.apply(state(1, [
        endpoint(dp_node.ep("a"), [], ingress=False, egress=False),
        endpoint(b, [rule(cidr_identity, INGRESS, TCP, 8080)], egress=True),
    ], extra_ipcache={"10.201.0.9/32": cidr_identity}))
    assert tcp_flow_passes(c, b.pod, 8080, True)
    assert not tcp_flow_passes(c, b.pod, 8081, False)


def test_policy_update_applies_to_next_new_connection(dp_node):
    a, b = dp_node.ep("a"), dp_node.ep("b")
    deny = state(1, [endpoint(a, [], ingress=False), endpoint(b, [], ingress=False, egress=False)])
    allow = state(2, [endpoint(a, [rule(257, EGRESS, TCP, 8080)], ingress=False),
                      endpoint(b, [], ingress=False, egress=False)])
    dp_node.dp.apply(deny)
    assert not tcp_flow_passes(a.pod, b.pod, 8080, False)
    dp_node.dp.apply(allow)
    assert tcp_flow_passes(a.pod, b.pod, 8080, True)
    dp_node.dp.apply(deny)
    assert not tcp_flow_passes(a.pod, b.pod, 8080, False)


def test_established_connection_survives_policy_that_denies_new_ones(dp_node):
    """Documented behaviour (as Cilium): conntrack keeps established flows;
    only new connections see the new policy."""
    a, b = dp_node.ep("a"), dp_node.ep("b")
    allow = state(1, [endpoint(a, [rule(257, EGRESS, TCP, 8080)], ingress=False),
                      endpoint(b, [], ingress=False, egress=False)])
    deny = state(2, [endpoint(a, [rule(257, EGRESS, TCP, 8080, Verdict.DENY)], ingress=False),
                     endpoint(b, [], ingress=False, egress=False)])
    dp_node.dp.apply(allow)
    with Server(b.pod, 8080) as srv:
        c = tcp_connect(a.pod, b.pod.ip, 8080, 2.0)
        assert c is not None
        conn = srv.accept()
        assert conn is not None
        try:
            dp_node.dp.apply(deny)
            for i in range(3):
                c.sendall(b"%d" % i)
                assert conn.recv(1) == b"%d" % i
                conn.sendall(b"k")
                assert c.recv(1) == b"k"
            assert tcp_connect(a.pod, b.pod.ip, 8080, 0.4) is None
            assert srv.accept(0.2) is None
        finally:
            c.close()
            conn.close()


def test_arp_passes_and_blocked_traffic_reports_reason(dp_node):
    """Pods resolve the gateway with ARP through an enforcing program."""
    a = dp_node.ep("a")
    dp_node.dp.apply(state(1, [endpoint(a, [], ingress=True, egress=True),
                               endpoint(dp_node.ep("b"), [], ingress=False, egress=False)]))
    subprocess.run(a.pod.argv(["ip", "neigh", "flush", "dev", "eth0"]), check=True)
    with dp_node.dp.events() as stream:
        stream.drain()
        assert not tcp_flow_passes(a.pod, dp_node.node.pods["b"], 8080, False)
        drops = _drops(stream)
    out = subprocess.run(a.pod.argv(["ip", "neigh", "show", "dev", "eth0"]), capture_output=True, text=True).stdout
    assert "lladdr" in out  # ARP for the gateway went through
    assert drops[0].reason == Reason.NO_POLICY_MATCH


def test_no_window_while_flipping_policies_that_both_deny_a_port(dp_node):
    """Old: allow 8000-8079 and 8081-8100 (8080 unmatched -> drop). New: allow
    every port but deny 8080. Written in the wrong order (allow-all before
    the deny), 8080 opens between two writes. The gaps between writes are
    widened to 20 ms while a client keeps knocking on 8080: the server must
    never see it. (With a naive write order this test fails.)"""
    import threading
    import time

    from redirect.reconcile import apply_state
    from tests.datapath.support import Server, tcp_connect

    a, b = dp_node.ep("a"), dp_node.ep("b")
    old = state(1, [endpoint(a, [rule(257, EGRESS, TCP, (8000, 8079)), rule(257, EGRESS, TCP, (8081, 8100))],
                             ingress=False), endpoint(b, [], ingress=False, egress=False)])
    new = state(2, [endpoint(a, [rule(257, EGRESS, ANY), rule(257, EGRESS, TCP, 8080, Verdict.DENY)],
                             ingress=False), endpoint(b, [], ingress=False, egress=False)])
    keep = set(dp_node.dp.endpoints())
    dp_node.dp.apply(old)
    stop = threading.Event()
    attempts = 0

    def knock() -> None:
        nonlocal attempts
        while not stop.is_set():
            s = tcp_connect(a.pod, b.pod.ip, 8080, 0.005)
            attempts += 1
            if s is not None:
                s.close()

    with Server(b.pod, 8080) as srv:
        t = threading.Thread(target=knock)
        t.start()
        try:
            for i in range(10):
                apply_state(dp_node.dp.maps, new if i % 2 == 0 else old, keep, after_write=lambda: time.sleep(0.02))
        finally:
            stop.set()
            t.join()
        assert attempts > 20
        assert not srv.pending(0.1), "a connection to the doubly-denied port got through"
    dp_node.dp.apply(new)
    assert tcp_flow_passes(a.pod, b.pod, 8081, True)  # the new state did apply
