"""Reading the kernel's per-CPU counters without a kernel: the CPU count and
the per-CPU value layout (redirect/counters.py), and their names as the agent
exports them (agent/adapters/kernel_datapath.py); a conntrack entry as
redirect/conntrack.py reads it back."""

from __future__ import annotations

import ctypes
import struct
from ipaddress import IPv4Address

import pytest

from agent.adapters.kernel_datapath import verdict_counters
from redirect import conntrack, counters, layout


@pytest.mark.parametrize("text, n", [("0\n", 1), ("0-7\n", 8), ("0,2-3", 4), ("0-3,8-9", 10)])
def test_possible_cpus_count_up_to_the_highest_id(text, n):
    assert counters.parse_cpu_list(text) == n


def test_a_bad_cpu_list_is_an_error():
    with pytest.raises(ValueError, match="no CPU"):
        counters.parse_cpu_list("\n")


def test_per_cpu_values_are_summed():
    raw = b"".join(struct.pack("=Q", n) for n in (3, 0, 4, 10))
    assert counters.decode_percpu(raw, 4) == 17


def test_the_key_is_four_bytes_and_the_value_one_counter():
    assert ctypes.sizeof(layout.MetricsKey) == 4 and ctypes.sizeof(layout.MetricsValue) == 8
    assert layout.CONSTANTS["METRICS_MAX"] == layout.METRICS_MAX


def test_rows_get_the_names_the_metrics_carry():
    rows = [
        counters.VerdictCount(layout.EventVerdict.DROP, layout.Reason.POLICY_DENY, 0, 3),
        counters.VerdictCount(layout.EventVerdict.REDIRECT, layout.Reason.POLICY_REDIRECT, 1, 2),
        counters.VerdictCount(layout.EventVerdict.DROP, 200, layout.DIR_NONE, 1),  # a reason this code does not know
    ]
    got = [(v.verdict, v.reason, v.direction, v.packets) for v in verdict_counters(rows)]
    assert got == [("drop", "policy-deny", "ingress", 3), ("redirect", "policy-redirect", "egress", 2), ("drop", "200", "none", 1)]


def test_a_restored_reply_is_a_forward_with_reason_ct_restored():
    rows = [counters.VerdictCount(layout.EventVerdict.FORWARD, layout.Reason.CT_RESTORED, 0, 5)]
    assert [(v.verdict, v.reason, v.direction) for v in verdict_counters(rows)] == [("forward", "ct-restored", "ingress")]


def test_a_conntrack_entry_decodes_and_is_live_until_strictly_past_its_expiry():
    key = IPv4Address("10.0.0.1").packed + IPv4Address("10.0.0.2").packed + struct.pack("!HH", 40000, 80) + bytes([6, 1, 0, 0])
    value = struct.pack("=QHB5x", 1_000, 0, layout.CT_F_REPLY | layout.CT_F_ANSWERED)
    e = conntrack.decode(key, value)
    assert (e.saddr, e.daddr, e.sport, e.dport, e.protocol, e.scope) == (
        IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2"), 40000, 80, 6, 1)
    assert e.reply and e.answered
    assert e.live(1_000) and not e.live(1_001)  # as the datapath's ct_find
