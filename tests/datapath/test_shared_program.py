"""One compiled program serves every endpoint: attaching another endpoint
does not compile, and each endpoint still enforces its own policy (the
program finds its endpoint by the veth's ifindex)."""

from __future__ import annotations

from typing import Iterator

import pytest

from redirect import loader, tc
from redirect.layout import EventVerdict, Reason
from tests.datapath.conftest import ENDPOINT_IDS, Install, make_install
from tests.datapath.support import EGRESS, INGRESS, TCP, endpoint, rule, state, tcp_flow_passes

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[Install, list[int]]]:
    """a, b, c attached one by one; the compile count after each attach."""
    with make_install(attach=()) as inst:
        counts = []
        for name in ("a", "b", "c"):
            ep = inst.ep(name)
            inst.dp.attach_endpoint(ep.endpoint_id, ep.pod.host_ifname, ep.pod.ip, ep.identity)
            counts.append(loader.compile_count())
        a, b, c = inst.ep("a"), inst.ep("b"), inst.ep("c")
        res = inst.dp.apply(state(1, [
            endpoint(a, [rule(b.identity, EGRESS, TCP, 8080)], ingress=False),
            endpoint(b, [rule(c.identity, EGRESS, TCP, 9090), rule(a.identity, INGRESS, TCP, 8080)]),
            endpoint(c, [rule(b.identity, INGRESS, TCP, 9090)], egress=False),
        ]))
        assert res.ok, res
        yield inst, counts


def test_second_and_third_endpoint_reuse_the_first_build(shared):
    inst, counts = shared
    assert counts[1] == counts[0] and counts[2] == counts[0]  # only the first attach compiled
    names = {tc.attached(inst.ep(n).pod.host_ifname, inst.node.netns) for n in ("a", "b", "c")}
    assert len(names) == 1 and next(iter(names)).ingress.startswith("ciliate_lxc_")
    progs = {inst.dp.prog_stats(inst.ep(n).endpoint_id)["from"].id for n in ("a", "b", "c")}
    assert len(progs) == 1  # the same kernel program on every veth
    header = (inst.state_dir / str(ENDPOINT_IDS["b"]) / "ep_config.h").read_text()
    assert f"endpoint_id = {ENDPOINT_IDS['b']}" in header and str(inst.ep("b").pod.ip) in header


@pytest.mark.parametrize(
    "src, dst, port, expect, dropped_at",
    [
        pytest.param("a", "b", 8080, True, None, id="a-egress-allows-b-8080"),
        pytest.param("a", "b", 9090, False, "a", id="a-egress-denies-b-9090"),
        pytest.param("a", "c", 9090, False, "a", id="a-egress-denies-c"),
        pytest.param("b", "c", 9090, True, None, id="b-egress-and-c-ingress-allow"),
        pytest.param("b", "c", 8080, False, "b", id="b-egress-denies-c-8080"),
        pytest.param("c", "a", 8080, True, None, id="c-unenforced-to-a-unenforced"),
        pytest.param("c", "b", 8080, False, "c", id="b-ingress-admits-only-a"),
    ],
)
def test_each_endpoint_enforces_its_own_policy(shared, src, dst, port, expect, dropped_at):
    inst, _ = shared
    with inst.dp.events() as stream:
        stream.drain()
        assert tcp_flow_passes(inst.ep(src).pod, inst.ep(dst).pod, port, expect) is expect
        drops = [e for e in stream.drain() if e.verdict == EventVerdict.DROP]
    if dropped_at is not None:
        # The drop names the endpoint whose veth saw it: the program found
        # its endpoint at run time, not from a compiled-in constant.
        assert drops and drops[0].endpoint_id == ENDPOINT_IDS[dropped_at]
        assert drops[0].reason == Reason.NO_POLICY_MATCH
    else:
        assert not drops


def test_veth_without_endpoint_entry_drops(shared):
    """Fail closed: the shared program on a veth with no ciliate_ifindex
    entry has no endpoint to act for, so it drops."""
    inst, _ = shared
    a, b = inst.ep("a"), inst.ep("b")
    idx = tc.ifindex(a.pod.host_ifname, inst.node.netns)
    entry = inst.dp.maps.read_ifindex()[idx]
    assert entry == (a.endpoint_id, a.pod.ip)
    inst.dp.maps.delete_ifindex(idx, a.endpoint_id)
    try:
        with inst.dp.events() as stream:
            stream.drain()
            assert not tcp_flow_passes(a.pod, b.pod, 8080, False)
            drops = [e for e in stream.drain() if e.verdict == EventVerdict.DROP]
        assert drops and drops[0].reason == Reason.ENDPOINT_UNKNOWN
    finally:
        inst.dp.maps.write_ifindex(idx, *entry)
    assert tcp_flow_passes(a.pod, b.pod, 8080, True)
