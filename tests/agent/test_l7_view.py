"""The regenerator republishes to Envoy whenever what Envoy renders from
changes, including a receiver's L3/L4 entries that decide whether its
ingress HTTP rules bind a sender's egress listener."""

from __future__ import annotations

from agent.core.l7_view import l7_view
from policy.compiled import Verdict
from tests.xds.test_receiver_rules import _state


def test_receiver_entries_alone_change_the_view():
    # Same L7 policies on both endpoints; only whether the receiver's ingress
    # redirects this sender differs, which changes the egress listener's rules.
    assert _state(receiver_verdict=Verdict.REDIRECT).endpoints[2].l7 == _state(receiver_verdict=Verdict.ALLOW).endpoints[2].l7
    assert l7_view(_state(receiver_verdict=Verdict.REDIRECT)) != l7_view(_state(receiver_verdict=Verdict.ALLOW))


def test_equal_states_give_equal_views():
    assert l7_view(_state()) == l7_view(_state())


def test_an_address_no_http_rule_names_does_not_change_the_view():
    """Cluster churn: another node's pod that no L7 rule selects comes and
    goes without a publish to Envoy; one whose identity a rule names does."""
    from dataclasses import replace
    from ipaddress import IPv4Network

    st = _state()
    named = {i for ep in st.endpoints.values() for pol in ep.l7 for r in pol.peer_rules for i in r.identities}
    unnamed = max(named | set(st.ipcache.values())) + 1
    far = IPv4Network("10.251.9.9/32")
    assert l7_view(replace(st, ipcache={**st.ipcache, far: unnamed})) == l7_view(st)
    some = next(iter(i for i in named if i >= 256))
    assert l7_view(replace(st, ipcache={**st.ipcache, far: some})) != l7_view(st)
