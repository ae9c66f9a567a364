"""The kernel's per-CPU verdict counters (ciliate_metrics) count real packets.

Pod a sends UDP datagrams to pod b on a port b's ingress policy does not
allow: the server never receives one (checked on its socket), and the drop
counter for (drop, no-policy-match, ingress) grows by exactly the number
sent, also when nobody reads the ring buffer. An allowed TCP connection
counts one forwarded flow (its first packet's decision), not its packets;
a pod-to-pod flow that both policies allow is recorded under the sender's
egress decision, as its event is.
What the agent exports as ciliate_drop_count_total / ciliate_forward_count_total
goes through the same reader (agent/adapters/kernel_datapath.py).
"""

from __future__ import annotations

import socket

import pytest

from agent.adapters.kernel_datapath import verdict_counters
from redirect import counters
from tests.datapath.support import ANY, EGRESS, INGRESS, TCP, Server, endpoint, rule, state, tcp_connect

pytestmark = pytest.mark.privileged

DATAGRAMS = 25
UDP_PORT = 9100
TCP_PORT = 8080


def _packets(dp, verdict: str, reason: str, direction: str) -> int:
    rows = verdict_counters(counters.read_verdict_counts(dp.maps))
    return sum(r.packets for r in rows if (r.verdict, r.reason, r.direction) == (verdict, reason, direction))


def test_dropped_packets_are_counted_one_by_one(dp_node):
    a, b = dp_node.ep("a"), dp_node.ep("b")
    dp_node.dp.apply(state(1, [endpoint(a, [rule(0, EGRESS, ANY)], ingress=False), endpoint(b, [rule(256, INGRESS, TCP, TCP_PORT)], egress=False)]))
    before = _packets(dp_node.dp, "drop", "no-policy-match", "ingress")
    with Server(b.pod, UDP_PORT, socket.SOCK_DGRAM) as srv:
        c = a.pod.socket(socket.SOCK_DGRAM)
        try:
            for i in range(DATAGRAMS):
                c.sendto(b"x%d" % i, (str(b.pod.ip), UDP_PORT))
        finally:
            c.close()
        assert not srv.pending(0.5), "a datagram the policy denies reached the server"
    assert _packets(dp_node.dp, "drop", "no-policy-match", "ingress") - before == DATAGRAMS


def test_an_allowed_connection_counts_one_forwarded_flow(dp_node):
    a, b = dp_node.ep("a"), dp_node.ep("b")
    dp_node.dp.apply(state(2, [endpoint(a, [rule(0, EGRESS, ANY)], ingress=False), endpoint(b, [rule(256, INGRESS, TCP, TCP_PORT)], egress=False)]))
    before = _packets(dp_node.dp, "forward", "policy-allow", "egress")
    with Server(b.pod, TCP_PORT) as srv:
        conn = tcp_connect(a.pod, b.pod.ip, TCP_PORT, 2.0)
        assert conn is not None
        accepted = srv.accept()
        assert accepted is not None
        conn.sendall(b"x" * 10_000)  # established packets: not counted again
        accepted.recv(10_000)
        accepted.close()
        conn.close()
    assert _packets(dp_node.dp, "forward", "policy-allow", "egress") - before == 1


def test_map_fill_names_every_map(dp_node):
    fills = {f.name: f for f in counters.map_fill(dp_node.dp.maps)}
    assert {"ciliate_ipcache", "ciliate_lxc", "ciliate_ifindex", "ciliate_policy", "ciliate_ct"} <= fills.keys()
    assert fills["ciliate_lxc"].entries >= 2 and fills["ciliate_lxc"].capacity == dp_node.dp.maps.sizes.endpoints
    assert any(name.startswith("ciliate_policy_") for name in fills)
