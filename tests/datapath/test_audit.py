"""Policy audit mode in the kernel (LXC_F_AUDIT): what the policy would drop
passes, its event says AUDIT with the reason and direction that would have
dropped it, and the audit counter counts it; switching audit off drops the
next new connection at once. A missing policy map is never audited.

Pods a and b are endpoints; c is unmanaged (its packets are decided by b's
to-container hook)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.adapters.kernel_datapath import verdict_counters
from policy.compiled import Verdict
from redirect import counters
from redirect.layout import EventVerdict, Reason
from tests.datapath.support import EGRESS, INGRESS, TCP, endpoint, rule, state, tcp_flow_passes

pytestmark = pytest.mark.privileged


def _audits(stream) -> list:
    return [e for e in stream.drain() if e.verdict == EventVerdict.AUDIT]


def _counted(dp, reason: str, direction: str) -> int:
    rows = verdict_counters(counters.read_verdict_counts(dp.maps))
    return sum(r.packets for r in rows if (r.verdict, r.reason, r.direction) == ("audit", reason, direction))


def test_audited_destination_lets_denied_flow_through_and_reports_it(dp_node):
    a, b = dp_node.ep("a"), dp_node.ep("b")
    a_pol = endpoint(a, [rule(257, EGRESS, TCP, 8080)], ingress=False)
    b_pol = endpoint(b, [], egress=False)  # ingress enforced, nothing allowed
    dp_node.dp.apply(state(1, [a_pol, replace(b_pol, audit=True)]))
    before = _counted(dp_node.dp, "no-policy-match", "ingress")
    with dp_node.dp.events() as stream:
        stream.drain()
        assert tcp_flow_passes(a.pod, b.pod, 8080, True)
        audits = _audits(stream)
    assert audits, "no AUDIT event for the flow b's ingress policy would drop"
    ev = audits[0]
    assert (ev.dport, ev.reason, ev.direction.name, ev.src_identity) == (8080, Reason.NO_POLICY_MATCH, "INGRESS", 256)
    # The record names the endpoint whose policy would have dropped (b), not
    # the sender whose veth saw the packet.
    assert (ev.endpoint_id, ev.peer_endpoint_id) == (b.endpoint_id, a.endpoint_id)
    assert _counted(dp_node.dp, "no-policy-match", "ingress") - before == 1

    # Audit off: the next new connection is dropped, nothing restarted.
    dp_node.dp.apply(state(2, [a_pol, b_pol]))
    with dp_node.dp.events() as stream:
        stream.drain()
        assert not tcp_flow_passes(a.pod, b.pod, 8080, False)
        drops = [e for e in stream.drain() if e.verdict == EventVerdict.DROP]
    assert drops and drops[0].reason == Reason.NO_POLICY_MATCH


def test_audited_source_egress_deny_is_reported_in_the_egress_direction(dp_node):
    a, b = dp_node.ep("a"), dp_node.ep("b")
    a_pol = endpoint(a, [rule(257, EGRESS, TCP, 8080, Verdict.DENY)], ingress=False)
    b_pol = endpoint(b, [rule(256, INGRESS, TCP, 8080)], egress=False)
    dp_node.dp.apply(state(1, [replace(a_pol, audit=True), b_pol]))
    with dp_node.dp.events() as stream:
        stream.drain()
        assert tcp_flow_passes(a.pod, b.pod, 8080, True)
        audits = _audits(stream)
    assert audits and (audits[0].reason, audits[0].direction.name) == (Reason.POLICY_DENY, "EGRESS")
    assert (audits[0].endpoint_id, audits[0].peer_endpoint_id) == (a.endpoint_id, b.endpoint_id)
    # Only the audited endpoint's decision is audited: b enforcing its own
    # ingress still drops what b's policy does not allow.
    assert not tcp_flow_passes(a.pod, b.pod, 8081, False)


def test_both_sides_audited_report_one_record_each_naming_its_own_endpoint(dp_node):
    a, b = dp_node.ep("a"), dp_node.ep("b")
    a_pol = endpoint(a, [rule(257, EGRESS, TCP, 8080, Verdict.DENY)], ingress=False)
    b_pol = endpoint(b, [], egress=False)  # ingress enforced, nothing allowed
    dp_node.dp.apply(state(1, [replace(a_pol, audit=True), replace(b_pol, audit=True)]))
    with dp_node.dp.events() as stream:
        stream.drain()
        assert tcp_flow_passes(a.pod, b.pod, 8080, True)
        audits = _audits(stream)
    got = {(e.direction.name, e.reason, e.endpoint_id, e.peer_endpoint_id) for e in audits if e.dport == 8080}
    assert got == {
        ("EGRESS", Reason.POLICY_DENY, a.endpoint_id, b.endpoint_id),
        ("INGRESS", Reason.NO_POLICY_MATCH, b.endpoint_id, a.endpoint_id),
    }, audits


def test_audit_at_the_destination_hook_for_an_unmanaged_source(dp_node):
    b, c = dp_node.ep("b"), dp_node.node.pods["c"]
    cidr_identity = (1 << 24) + 9
    b_pol = endpoint(b, [rule(cidr_identity, INGRESS, TCP, 8080)], egress=False)
    others = endpoint(dp_node.ep("a"), [], ingress=False, egress=False)
    extra = {"10.201.0.9/32": cidr_identity}
    dp_node.dp.apply(state(1, [others, replace(b_pol, audit=True)], extra_ipcache=extra))
    with dp_node.dp.events() as stream:
        stream.drain()
        assert tcp_flow_passes(c, b.pod, 8081, True)
        audits = _audits(stream)
    assert audits and audits[0].dport == 8081 and audits[0].reason == Reason.NO_POLICY_MATCH
    dp_node.dp.apply(state(2, [others, b_pol], extra_ipcache=extra))
    assert not tcp_flow_passes(c, b.pod, 8081, False)


def test_audit_is_off_while_a_policy_change_is_written(dp_node):
    """reconcile: the audit flag ends first and starts last (old AND new while
    the maps change), so audit never covers a half-written policy."""
    from redirect import layout
    from redirect.reconcile import apply_state

    a, b = dp_node.ep("a"), dp_node.ep("b")
    a_pol = endpoint(a, [rule(257, EGRESS, TCP, 8080)], ingress=False)
    one = endpoint(b, [rule(256, INGRESS, TCP, 9000)], egress=False)
    two = endpoint(b, [rule(256, INGRESS, TCP, 9001)], egress=False)
    keep = set(dp_node.dp.endpoints())
    seen: list[int] = []

    def flags() -> None:
        seen.append(dp_node.dp.maps.read_lxc()[b.pod.ip][2])

    for old, new in ((one, replace(two, audit=True)), (replace(two, audit=True), one)):
        dp_node.dp.apply(state(1, [a_pol, old]))
        seen.clear()
        apply_state(dp_node.dp.maps, state(2, [a_pol, new]), keep, after_write=flags)
        assert seen and not any(f & layout.LXC_F_AUDIT for f in seen), seen
        final = dp_node.dp.maps.read_lxc()[b.pod.ip][2]
        assert bool(final & layout.LXC_F_AUDIT) == new.audit
