"""Reading the kernel's per-CPU counters without a kernel: the CPU count and
the per-CPU value layout (redirect/counters.py), and their names as the agent
exports them (agent/adapters/kernel_datapath.py)."""

from __future__ import annotations

import ctypes
import struct

import pytest

from agent.adapters.kernel_datapath import verdict_counters
from redirect import counters, layout


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
