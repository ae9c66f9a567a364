"""redirect/applied.py: when the datapath may write only a difference, and
when it must compare every map with the kernel (pure; no kernel needed)."""

from __future__ import annotations

from ipaddress import IPv4Address

from policy.compiler import Compiler
from policy.endpoint import Endpoint
from policy.identity import identity_labels
from redirect.applied import FULL_RESYNC, AppliedMemory


def _states():
    c = Compiler()
    c.upsert_endpoint(Endpoint(1, {"app": "web"}, IPv4Address("10.0.0.1")))
    c.set_remote({IPv4Address("10.9.0.1"): (40000, identity_labels({"app": "r"}))})
    s1 = c.compile()
    c.set_remote({IPv4Address("10.9.0.2"): (40000, identity_labels({"app": "r"}))}, changed=frozenset({IPv4Address("10.9.0.1"), IPv4Address("10.9.0.2")}))
    return s1, c.compile()


def test_after_an_apply_only_the_difference_and_at_least_every_resync_everything():
    now = [0.0]
    m = AppliedMemory(clock=lambda: now[0])
    s1, s2 = _states()
    full, changes, unchanged = m.plan(s1)
    assert full and changes is None and unchanged == frozenset()
    m.recorded(s1, {1}, full)
    now[0] = 1.0
    full, changes, unchanged = m.plan(s2)
    assert not full and {str(n) for n in changes} == {"10.9.0.1/32", "10.9.0.2/32"}
    assert unchanged == {1}  # the compiler handed back the same endpoint policy
    m.recorded(s2, {1}, full)
    full, changes, _ = m.plan(s2)
    assert (full, changes) == (False, frozenset())  # the same state again: nothing to write
    m.recorded(s2, {1}, full)
    now[0] = 1.0 + FULL_RESYNC
    assert m.plan(s2)[0], "a read-back at least every FULL_RESYNC seconds"


def test_an_apply_that_did_not_go_through_leaves_the_kernel_in_doubt():
    now = [0.0]
    m = AppliedMemory(clock=lambda: now[0])
    s1, s2 = _states()
    m.recorded(s1, {1}, m.plan(s1)[0])
    m.plan(s2)  # ... and the apply raised: nothing recorded
    full, changes, unchanged = m.plan(s2)
    assert not full and changes is None and unchanged == frozenset()


def test_a_state_not_counted_from_the_applied_one_is_compared_whole():
    now = [0.0]
    m = AppliedMemory(clock=lambda: now[0])
    s1, s2 = _states()
    m.recorded(s2, {1}, m.plan(s2)[0])
    assert m.plan(s1)[1] is None  # going back: s1's changes are not counted from s2
    m.recorded(s1, {1}, False)
    m.forget_endpoint(1)
    assert m.plan(s1)[2] == frozenset()
