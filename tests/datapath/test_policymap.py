"""Pure checks of the kernel policy representation (no kernel needed):
ranges as LPM blocks, the C lookup model against policy.compiled.lookup,
and the update order that never lets a doubly-denied flow through."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.compiled import (
    ALL_PORTS,
    Direction,
    EndpointPolicy,
    PolicyEntry,
    PolicyKey,
    PortRange,
    Protocol,
    Verdict,
    lookup,
)
from redirect import policymap


@pytest.mark.parametrize(
    "lo, hi, blocks",
    [
        pytest.param(80, 80, [(80, 16)], id="single"),
        pytest.param(80, 90, [(80, 13), (88, 15), (90, 16)], id="unaligned"),
        pytest.param(0, 65535, [(0, 0)], id="all"),
        pytest.param(1024, 2047, [(1024, 6)], id="aligned-block"),
        pytest.param(0, 1, [(0, 15)], id="low-pair"),
        pytest.param(65535, 65535, [(65535, 16)], id="top"),
    ],
)
def test_port_blocks(lo, hi, blocks):
    assert policymap.port_blocks(PortRange(lo, hi)) == blocks


@given(st.integers(0, 65535), st.integers(0, 65535))
def test_port_blocks_cover_exactly_and_are_aligned(a, b):
    r = PortRange(min(a, b), max(a, b))
    covered: list[int] = []
    for start, plen in policymap.port_blocks(r):
        size = 1 << (16 - plen)
        assert start % size == 0
        covered.extend(range(start, start + size))
    assert covered == list(range(r.lo, r.hi + 1))
    assert len(policymap.port_blocks(r)) <= 30


def test_encode_decode_roundtrip():
    k = policymap.KernelKey(1 << 24 | 5, Direction.EGRESS, 17, 8064, 11)
    v = policymap.KernelValue(Verdict.REDIRECT, 15001)
    assert policymap.decode_key(policymap.encode_key(k)) == k
    assert policymap.decode_value(policymap.encode_value(v)) == v
    assert len(policymap.encode_key(k)) == policymap.KEY_SIZE == 12


def test_overlapping_ranges_are_rejected_with_the_place():
    ep = EndpointPolicy(3, 256, None, True, True, (
        PolicyEntry(PolicyKey(9, Direction.INGRESS, Protocol.TCP, PortRange(80, 90)), Verdict.ALLOW),
        PolicyEntry(PolicyKey(9, Direction.INGRESS, Protocol.TCP, PortRange(88, 88)), Verdict.DENY),
    ))
    with pytest.raises(ValueError, match="endpoint 3: overlapping port ranges for identity 9 INGRESS TCP"):
        policymap.render(ep)


# --- random policies with the compiler's guarantee: disjoint ranges per
# (identity, direction, protocol) -----------------------------------------
IDENTS = [0, 256, 257]
PORT_EDGES = [0, 53, 79, 80, 81, 443, 1000, 8080, 65535]


@st.composite
def ranges(draw) -> list[PortRange]:
    if draw(st.booleans()):
        return [ALL_PORTS]
    cuts = sorted(set(draw(st.lists(st.sampled_from(PORT_EDGES), min_size=2, max_size=6))))
    out = []
    for lo, hi in zip(cuts, cuts[1:]):
        if draw(st.booleans()):
            out.append(PortRange(lo + (1 if out and out[-1].hi >= lo else 0), hi))
    return [r for r in out if r.lo <= r.hi]


@st.composite
def endpoints(draw) -> EndpointPolicy:
    entries = []
    for ident in IDENTS:
        for direction in Direction:
            for proto in (Protocol.ANY, Protocol.TCP, Protocol.UDP):
                if not draw(st.integers(0, 3)) == 0:
                    continue
                for r in draw(ranges()):
                    v = draw(st.sampled_from(list(Verdict)))
                    if v == Verdict.REDIRECT and proto == Protocol.UDP:
                        v = Verdict.ALLOW
                    entries.append(PolicyEntry(PolicyKey(ident, direction, proto, r), v,
                                               draw(st.integers(10000, 10005)) if v == Verdict.REDIRECT else 0))
    return EndpointPolicy(1, 256, None, draw(st.booleans()), draw(st.booleans()),
                          tuple(sorted(entries, key=lambda e: e.key)))


PROBES = [(peer, d, proto, port) for peer in (256, 257, 300) for d in Direction
          for proto in (Protocol.TCP, Protocol.UDP, Protocol.ICMP) for port in (0, 80, 81, 443, 9999)]


@settings(max_examples=60, deadline=None)
@given(endpoints())
def test_kernel_model_matches_reference_lookup(ep):
    kernel = policymap.render(ep)
    for peer, d, proto, port in PROBES:
        ref = lookup(ep, peer, d, proto, port)
        allowed, verdict, proxy_port = policymap.kernel_lookup(kernel, ep.enforced(d), peer, d, proto, port)
        assert (allowed, verdict, proxy_port) == (ref.allowed, ref.verdict, ref.proxy_port), (peer, d, proto, port)


@settings(max_examples=60, deadline=None)
@given(endpoints(), endpoints())
def test_update_order_never_admits_a_flow_both_states_deny(old_ep, new_ep):
    old, new = policymap.render(old_ep), policymap.render(new_ep)
    doubly_denied = [
        p for p in PROBES
        if not policymap.kernel_lookup(old, True, *p)[0] and not policymap.kernel_lookup(new, True, *p)[0]
    ]
    cur = dict(old)
    for mid in policymap.apply_ops(cur, policymap.plan_update(old, new)):
        for p in doubly_denied:
            assert not policymap.kernel_lookup(mid, True, *p)[0], p
    assert cur == new


def test_merge_ranges_shows_a_range_as_written():
    ep = EndpointPolicy(1, 256, None, True, True, (
        PolicyEntry(PolicyKey(9, Direction.EGRESS, Protocol.TCP, PortRange(8000, 8100)), Verdict.ALLOW),
        PolicyEntry(PolicyKey(9, Direction.EGRESS, Protocol.TCP, PortRange(8101, 8101)), Verdict.DENY),
        PolicyEntry(PolicyKey(0, Direction.INGRESS, Protocol.ANY, ALL_PORTS), Verdict.ALLOW),
    ))
    blocks = [policymap.describe(k, v) for k, v in policymap.render(ep).items()]
    assert len(blocks) == 6
    assert [str(e) for e in policymap.merge_ranges(blocks)] == [
        "ingress identity=0        ANY  port=*           ALLOW",
        "egress  identity=9        TCP  port=8000-8100   ALLOW",
        "egress  identity=9        TCP  port=8101        DENY",
    ]
