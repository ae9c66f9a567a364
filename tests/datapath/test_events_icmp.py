"""The verdict stream as `ciliate monitor` reads it, and the ICMP decision."""

from __future__ import annotations

import asyncio
import os
import select
import socket
import struct

import pytest

from policy.compiled import Direction, Protocol
from redirect.events import FlowEvent
from redirect.layout import EventVerdict, Hook, Reason
from tests.datapath.support import ANY, EGRESS, INGRESS, TCP, endpoint, rule, state, tcp_flow_passes
from tests.kernelnode import Pod, in_netns

pytestmark = pytest.mark.privileged


async def test_event_stream_yields_forward_and_drop_with_identities(dp_node):
    a, b = dp_node.ep("a"), dp_node.ep("b")
    dp_node.dp.apply(state(1, [endpoint(a, [rule(257, EGRESS, TCP, 8080)], ingress=False),
                               endpoint(b, [rule(256, INGRESS, TCP, 8080)], egress=False)]))
    got: list[FlowEvent] = []
    async with dp_node.dp.events() as stream:
        stream.drain()
        await asyncio.to_thread(tcp_flow_passes, a.pod, b.pod, 8080, True)
        await asyncio.to_thread(tcp_flow_passes, a.pod, b.pod, 8081, False)
        async def collect() -> None:
            async for ev in stream:
                got.append(ev)
                if ev.verdict == EventVerdict.DROP:
                    return
        await asyncio.wait_for(collect(), 5)
    fwd, drop = got[0], got[-1]
    assert (fwd.verdict, fwd.reason, fwd.hook) == (EventVerdict.FORWARD, Reason.POLICY_ALLOW, Hook.FROM_ENDPOINT)
    assert (fwd.src, fwd.dst, fwd.dport, fwd.protocol) == (a.pod.ip, b.pod.ip, 8080, 6)
    assert (fwd.src_identity, fwd.dst_identity, fwd.endpoint_id, fwd.peer_endpoint_id) == (256, 257, 11, 12)
    assert (drop.verdict, drop.dport, drop.direction) == (EventVerdict.DROP, 8081, Direction.EGRESS)
    assert "DROP" in str(drop) and "NO_POLICY_MATCH" in str(drop)


def _echo(client: Pod, dst, ident: int, wait: float) -> bool:
    """Send one ICMP echo request from the pod; True if the reply came back."""
    with in_netns(client.netns):
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        body = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"cdp"
        csum = 0
        for i in range(0, len(body), 2):
            chunk = body[i:i + 2].ljust(2, b"\0")
            csum += (chunk[0] << 8) + chunk[1]
        csum = (csum >> 16) + (csum & 0xFFFF)
        csum = ~(csum + (csum >> 16)) & 0xFFFF
        s.sendto(body[:2] + struct.pack("!H", csum) + body[4:], (str(dst), 0))
        end = wait
        while True:
            r, _, _ = select.select([s], [], [], end)
            if not r:
                return False
            pkt = s.recv(200)
            ihl = (pkt[0] & 0xF) * 4
            typ, _, _, rid, _ = struct.unpack("!BBHHH", pkt[ihl:ihl + 8])
            if typ == 0 and rid == ident:
                return True
    finally:
        s.close()


@pytest.mark.parametrize(
    "a_egress, expect",
    [
        pytest.param([rule(257, EGRESS, ANY)], True, id="l3-allow-admits-icmp"),
        pytest.param([rule(257, EGRESS, Protocol.ICMP)], True, id="icmp-all-ports-entry"),
        pytest.param([rule(257, EGRESS, ANY, 0)], False, id="port-rule-never-admits-icmp"),
        pytest.param([rule(257, EGRESS, TCP)], False, id="tcp-rule-does-not-admit-icmp"),
    ],
)
def test_icmp_echo_needs_an_l3_allow_and_the_reply_rides_conntrack(dp_node, a_egress, expect):
    a, b = dp_node.ep("a"), dp_node.ep("b")
    # b enforces egress with no allows: only conntrack lets the echo reply out.
    dp_node.dp.apply(state(1, [endpoint(a, a_egress, ingress=True),
                               endpoint(b, [rule(256, INGRESS, ANY)], egress=True)]))
    assert _echo(a.pod, b.pod.ip, os.getpid() & 0xFFFF, 2.0 if expect else 0.4) is expect


def test_an_echo_request_reusing_the_id_of_a_pods_own_echo_is_not_its_reply(dp_node):
    """Cilium's GHSA-c66w-hq56-4q97: a pings b with id X (allowed); b may not
    reach a, yet an echo *request* from b with the same id X would match the
    conntrack entry a's ping left for its reply. Only a reply may."""
    a, b = dp_node.ep("a"), dp_node.ep("b")
    dp_node.dp.apply(state(1, [endpoint(a, [rule(257, EGRESS, ANY)], ingress=True),
                               endpoint(b, [], ingress=False, egress=False)]))
    ident = (os.getpid() + 7) & 0xFFFF
    assert _echo(a.pod, b.pod.ip, ident, 2.0)  # a's own ping, and its reply
    assert not _echo(b.pod, a.pod.ip, ident, 0.4), "b's echo request rode a's conntrack entry into a"
    assert not _echo(b.pod, a.pod.ip, ident + 1, 0.4)  # and with any other id, of course
