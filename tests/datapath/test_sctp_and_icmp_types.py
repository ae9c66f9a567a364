"""SCTP by port and ICMP by message type, on real packets between pods.

The kernel here has no SCTP sockets (CONFIG_IP_SCTP is off), so SCTP
packets are written and read with raw IP sockets: the datapath judges the
packet, not a socket, and a raw socket in the server pod receives every
SCTP packet that reaches it, which is the proof that a packet arrived or
never did."""

from __future__ import annotations

import select
import socket
import struct

import pytest

from policy.compiled import Protocol, Verdict
from redirect.layout import EventVerdict, Reason
from tests.datapath.support import ANY, DENIED_WAIT, EGRESS, INGRESS, TCP, endpoint, rule, state
from tests.datapath.test_events_icmp import _echo
from tests.kernelnode import Pod, in_netns

pytestmark = pytest.mark.privileged

SCTP = Protocol.SCTP
WAIT = 10.0  # hang guard for what must arrive: returns as soon as it does


def _raw_sctp(pod: Pod) -> socket.socket:
    with in_netns(pod.netns):
        return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_SCTP)


def _sctp_init(sport: int, dport: int) -> bytes:
    # Common header (ports, verification tag 0, checksum) and an INIT chunk.
    # The checksum is left 0: no SCTP stack here checks it, and the datapath
    # judges the ports.
    chunk = struct.pack("!BBHIIHHI", 1, 0, 20, 0x1234, 65535, 1, 1, 0x55)
    return struct.pack("!HHII", sport, dport, 0, 0) + chunk


def _received(sock: socket.socket, sport: int, dport: int, wait: float) -> bool:
    """True when an SCTP packet with these ports reached the raw socket."""
    while True:
        r, _, _ = select.select([sock], [], [], wait)
        if not r:
            return False
        pkt = sock.recv(2048)
        ihl = (pkt[0] & 0xF) * 4
        if struct.unpack("!HH", pkt[ihl:ihl + 4]) == (sport, dport):
            return True


def _sctp_passes(src: Pod, dst: Pod, sport: int, dport: int, expect: bool) -> bool:
    tx, rx = _raw_sctp(src), _raw_sctp(dst)
    try:
        tx.sendto(_sctp_init(sport, dport), (str(dst.ip), 0))
        return _received(rx, sport, dport, WAIT if expect else DENIED_WAIT)
    finally:
        tx.close()
        rx.close()


@pytest.mark.parametrize(
    "a_egress, b_ingress, port, expect",
    [
        pytest.param([rule(257, EGRESS, SCTP, 9000)], [rule(256, INGRESS, SCTP, 9000)], 9000, True, id="sctp-port-allowed"),
        pytest.param([rule(257, EGRESS, SCTP, 9000)], [rule(256, INGRESS, SCTP, 9000)], 9001, False, id="other-sctp-port"),
        pytest.param([rule(257, EGRESS, SCTP, 9000)], [rule(256, INGRESS, TCP, 9000)], 9000, False, id="tcp-rule-is-not-sctp"),
        pytest.param([rule(257, EGRESS, ANY, 9000)], [rule(256, INGRESS, ANY, 9000)], 9000, True, id="any-covers-sctp"),
        pytest.param([rule(257, EGRESS, SCTP, (8000, 9999))], [rule(0, INGRESS, ANY)], 9000, True, id="sctp-port-range"),
        pytest.param(
            [rule(0, EGRESS, ANY), rule(257, EGRESS, SCTP, 9000, Verdict.DENY)], [rule(0, INGRESS, ANY)], 9000, False,
            id="sctp-deny-beats-l3-allow",
        ),
    ],
)
def test_sctp_is_decided_by_port(dp_node, a_egress, b_ingress, port, expect):
    a, b = dp_node.ep("a"), dp_node.ep("b")
    dp_node.dp.apply(state(1, [endpoint(a, a_egress, ingress=False), endpoint(b, b_ingress, egress=False)]))
    with dp_node.dp.events() as stream:
        stream.drain()
        assert _sctp_passes(a.pod, b.pod, 40000, port, expect) is expect
        drops = [e for e in stream.drain() if e.verdict == EventVerdict.DROP]
    if not expect:
        assert drops and (drops[0].protocol, drops[0].dport) == (132, port)


def test_an_sctp_reply_passes_on_the_association_and_an_unsolicited_packet_does_not(dp_node):
    """b admits SCTP 9000 from a; a admits nothing. b's answer from 9000 to
    a's port passes (conntrack), the same packet from b's port 9001 does not."""
    a, b = dp_node.ep("a"), dp_node.ep("b")
    dp_node.dp.apply(state(1, [endpoint(a, [rule(257, EGRESS, SCTP, 9000)]), endpoint(b, [rule(256, INGRESS, SCTP, 9000)])]))
    assert _sctp_passes(a.pod, b.pod, 40001, 9000, True)
    assert _sctp_passes(b.pod, a.pod, 9000, 40001, True), "the reply of an admitted SCTP flow was dropped"
    assert not _sctp_passes(b.pod, a.pod, 9001, 40001, False), "a packet of no admitted flow reached a"


@pytest.mark.parametrize(
    "a_egress, expect",
    [
        pytest.param([rule(257, EGRESS, Protocol.ICMP, 8)], True, id="echo-request-type-allowed"),
        pytest.param([rule(257, EGRESS, Protocol.ICMP, 0)], False, id="echo-reply-type-does-not-admit-a-request"),
        pytest.param([rule(257, EGRESS, ANY, 8)], False, id="port-8-of-any-protocol-is-not-icmp-type-8"),
        pytest.param([rule(257, EGRESS, TCP, 8)], False, id="tcp-port-8-is-not-icmp-type-8"),
        pytest.param([rule(257, EGRESS, Protocol.ICMPV6, 8)], False, id="icmpv6-type-8-is-not-icmp"),
        pytest.param([rule(257, EGRESS, ANY), rule(257, EGRESS, Protocol.ICMP, 8, Verdict.DENY)], False, id="type-deny-beats-l3"),
    ],
)
def test_icmp_is_decided_by_message_type(dp_node, a_egress, expect):
    """b admits everything; a's egress decides. An admitted echo request's
    reply comes back through conntrack although a's rule names type 8 only."""
    a, b = dp_node.ep("a"), dp_node.ep("b")
    dp_node.dp.apply(state(1, [endpoint(a, a_egress, ingress=True), endpoint(b, [rule(0, INGRESS, ANY)], egress=False)]))
    with dp_node.dp.events() as stream:
        stream.drain()
        assert _echo(a.pod, b.pod.ip, 0x4242, WAIT if expect else DENIED_WAIT) is expect
        drops = [e for e in stream.drain() if e.verdict == EventVerdict.DROP]
    if not expect:
        assert drops and drops[0].protocol == 1
        assert drops[0].reason in (Reason.NO_POLICY_MATCH, Reason.POLICY_DENY)
