"""The regenerator republishes to Envoy whenever what Envoy renders from
changes, including a receiver's L3/L4 entries that decide whether its
ingress HTTP rules bind a sender's egress listener."""

from __future__ import annotations

from agent.core.regenerator import l7_view
from policy.compiled import Verdict
from tests.xds.test_receiver_rules import _state


def test_receiver_entries_alone_change_the_view():
    # Same L7 policies on both endpoints; only whether the receiver's ingress
    # redirects this sender differs, which changes the egress listener's rules.
    assert _state(receiver_verdict=Verdict.REDIRECT).endpoints[2].l7 == _state(receiver_verdict=Verdict.ALLOW).endpoints[2].l7
    assert l7_view(_state(receiver_verdict=Verdict.REDIRECT)) != l7_view(_state(receiver_verdict=Verdict.ALLOW))


def test_equal_states_give_equal_views():
    assert l7_view(_state()) == l7_view(_state())
