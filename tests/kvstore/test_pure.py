"""The pure parts of kvstore: key layout, mirror, GC bookkeeping, the
publisher's plan. No etcd."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore import layout
from kvstore.gc import GcTracker
from kvstore.mirror import Change, Mirror
from kvstore.model import NodeInfo
from kvstore.publishing import Conflict, Delete, Put, Realized, Ref, plan
from tests.kvstore.support import apply_mirror_events

labels = st.frozensets(st.text(alphabet=st.sampled_from("ab;\\=:"), min_size=1, max_size=4), max_size=4)


@given(labels, labels)
def test_canonical_labels_are_unambiguous(x, y):
    assert (layout.canonical(x) == layout.canonical(y)) == (x == y)
    assert (layout.labels_value(x) == layout.labels_value(y)) == (x == y)
    assert layout.parse_labels_value(layout.labels_value(x)) == x


def test_labels_value_is_the_documented_json():
    assert layout.labels_value(frozenset({"k8s:io.kubernetes.pod.namespace=default", "k8s:app=x"})) == (
        b'["k8s:app=x","k8s:io.kubernetes.pod.namespace=default"]'
    )
    assert layout.canonical(frozenset({"k8s:b=2", "k8s:a=1;x"})) == "k8s:a=1\\;x;k8s:b=2"


@pytest.mark.parametrize("bad", [frozenset({""}), {"a"}, frozenset({1})], ids=["empty-label", "set", "int"])
def test_bad_labels_are_refused(bad):
    with pytest.raises(ValueError):
        layout.canonical(bad)


@pytest.mark.parametrize(
    "key, parsed",
    [
        pytest.param(b"ciliate/state/identities/v1/id/256", layout.Key("id", identity=256), id="id"),
        pytest.param(b"ciliate/state/identities/v1/id/255", None, id="id-below-range"),
        pytest.param(b"ciliate/state/identities/v1/id/0300", None, id="id-leading-zero"),
        pytest.param(b"ciliate/state/identities/v1/refs/300/node-a", layout.Key("ref", identity=300, node="node-a"), id="ref"),
        pytest.param(b"ciliate/state/identities/v1/refs/300/a/b", None, id="ref-bad-node"),
        pytest.param(b"ciliate/state/nodes/v1/a", layout.Key("node", node="a"), id="node"),
        pytest.param(b"ciliate/state/ip/v1/10.0.0.1", layout.Key("ip", ip=IPv4Address("10.0.0.1")), id="ip"),
        pytest.param(b"ciliate/state/ip/v1/fd00:10::5", layout.Key("ip", ip=IPv6Address("fd00:10::5")), id="ipv6"),
        pytest.param(b"ciliate/state/ip/v1/fd00:10:0::5", None, id="ipv6-not-canonical"),
        pytest.param(b"ciliate/state/ip/v1/not-an-ip", None, id="ip-bad"),
        pytest.param(b"ciliate/state/other", None, id="unknown"),
        pytest.param(b"\xff", None, id="not-utf8"),
    ],
)
def test_parse_key(key, parsed):
    assert layout.parse_key(key) == parsed


NODE_B = NodeInfo(name="b", ip=IPv4Address("192.168.0.2"), pod_cidr="10.2.0.0/24")


def test_mirror_hides_this_node_and_skips_malformed_values():
    m = Mirror("a")
    change = m.reset(
        [
            (layout.node_key("b"), layout.node_value(NODE_B)),
            (layout.node_key("a"), layout.node_value(NodeInfo(name="a", ip="192.168.0.1", pod_cidr="10.1.0.0/24"))),
            (layout.node_key("c"), b"{not json"),
            (layout.node_key("d"), layout.node_value(NODE_B)),  # name disagrees with the key
            (layout.ip_key(IPv4Address("10.2.0.1")), layout.ip_value(300, "b")),
            (layout.ip_key(IPv4Address("10.1.0.1")), layout.ip_value(301, "a")),
            (layout.ip_key(IPv4Address("10.2.0.2")), b'{"identity": 0, "node": "b"}'),
            (layout.id_key(300), layout.labels_value(frozenset({"x"}))),
            (layout.id_key(301), b"[1]"),
        ],
        revision=7,
    )
    assert change == Change(view=True, relisted=True)
    v = m.view()
    assert v.revision == 7
    assert v.nodes == {"b": NODE_B}
    assert set(v.endpoints) == {IPv4Address("10.2.0.1")}
    assert dict(v.identities) == {300: frozenset({"x"})}


def test_mirror_reports_our_keys_lost_and_view_changes():
    m = Mirror("a")
    m.reset([], revision=1)
    mine = layout.ip_key(IPv4Address("10.1.0.1"))
    assert not m.apply(False, mine, layout.ip_value(300, "a"), 2).view  # our own endpoint: not in the view
    assert m.apply(False, mine, layout.ip_value(300, "b"), 3).lost == mine  # taken by b
    assert m.apply(False, mine, layout.ip_value(300, "a"), 4).view  # back to us: leaves the view
    c = m.apply(True, mine, b"", 5)
    assert c.lost == mine and not c.view
    assert m.apply(True, layout.ref_key(300, "a"), b"", 6).lost == layout.ref_key(300, "a")
    assert m.apply(True, layout.ref_key(300, "b"), b"", 7).lost is None
    theirs = layout.ip_key(IPv4Address("10.2.0.1"))
    m.apply(False, theirs, layout.ip_value(300, "b"), 7)
    assert m.apply(True, theirs, b"", 7) == Change(view=True, freed=theirs)
    node_a = layout.node_value(NodeInfo(name="a", ip="192.168.0.1", pod_cidr="10.1.0.0/24"))
    assert not m.apply(False, layout.node_key("a"), node_a, 8).view
    c = m.apply(True, layout.node_key("a"), b"", 8)
    assert c.lost == layout.node_key("a") and not c.view
    assert m.apply(False, layout.id_key(300), layout.labels_value(frozenset({"x"})), 9).view
    assert not m.apply(False, layout.id_key(300), layout.labels_value(frozenset({"x"})), 10).view  # same value
    assert m.view().revision == 10


def test_gc_waits_for_the_grace_at_one_mod_revision():
    t = GcTracker(grace=10.0)
    assert t.scan({300: 5, 301: 6}, referenced={301}, now=0.0) == []
    assert t.scan({300: 5, 301: 6}, referenced={301}, now=9.9) == []
    assert t.scan({300: 5, 301: 6}, referenced={301}, now=10.0) == [(300, 5)]
    # rewritten (a reference came and went): the clock starts again
    assert t.scan({300: 8}, referenced=set(), now=11.0) == []
    assert t.scan({300: 8}, referenced=set(), now=20.9) == []
    # referenced: forgotten
    assert t.scan({300: 8}, referenced={300}, now=30.0) == []
    assert t.candidates == {}
    assert t.scan({300: 8}, referenced=set(), now=31.0) == []


def test_plan_adds_before_deletes_and_leaves_foreign_keys_alone():
    ip1, ip2, ip3 = (layout.ip_key(IPv4Address(f"10.1.0.{i}")) for i in (1, 2, 3))
    ref_x = layout.ref_key(300, "a")
    desired = {ip1: b"v1", ip3: b"v3"}
    refs = {ref_x: Ref(300, frozenset({"x"}))}
    realized = {
        ip1: Realized(b"v1", lease=9, mod_revision=4, mine=True),  # stale lease: re-put
        ip2: Realized(b"old", lease=7, mod_revision=5, mine=True),  # no longer wanted
        ip3: Realized(b"theirs", lease=8, mod_revision=6, mine=False),  # another node's
    }
    ops = plan(desired, refs, realized, lease_id=7, may_delete=lambda k: True)
    assert ops == [
        Ref(300, frozenset({"x"})),
        Put(ip1, b"v1", 4),
        Conflict(ip3, "published by another node; not overwritten"),
        Delete(ip2, 5),
    ]
    assert plan(desired, refs, realized, lease_id=7, may_delete=lambda k: False)[-1] != Delete(ip2, 5)
    assert plan(desired, refs, realized, lease_id=9, may_delete=lambda k: False, keys=[ip1]) == []


def test_a_dual_stack_node_record_round_trips_and_an_older_one_still_reads():
    node = NodeInfo(name="a", ip="192.168.0.1", pod_cidr="10.1.0.0/24", pod_cidr6="fd00:10:1::/64")
    assert layout.parse_node_value(layout.node_value(node)) == node
    old = layout.parse_node_value(b'{"name":"a","ip":"192.168.0.1","pod_cidr":"10.1.0.0/24"}')
    assert old is not None and old.pod_cidr6 is None and old.ip6 is None


_IPS = [IPv4Address(f"10.2.0.{i}") for i in range(1, 6)]
_event = st.one_of(
    st.tuples(st.just("ip"), st.sampled_from(_IPS), st.sampled_from([300, 301, 302]), st.sampled_from(["a", "b", "c"]), st.booleans()),
    st.tuples(st.just("id"), st.sampled_from([300, 301, 302]), st.sampled_from(["x", "y"]), st.booleans()),
    st.tuples(st.just("node"), st.sampled_from(["b", "c"]), st.booleans()),
)


@given(st.lists(st.lists(_event, max_size=6), max_size=8))
def test_a_views_delta_names_every_address_whose_entry_or_labels_changed(batches):
    """What consumers patch by: applying the delta's addresses to the
    previous view must give the new view, with every label change seen."""
    m = Mirror("a")
    m.reset([], revision=1)
    prev = m.view()
    rev = 1
    for batch in batches:
        rev = apply_mirror_events(m, batch, rev, lambda name: NodeInfo(name=name, ip="192.168.0.9", pod_cidr="10.9.0.0/24"))
        view = m.view()
        if view is prev:
            continue
        assert view.serial == prev.serial + 1 and view.delta is not None and view.delta.base == prev.serial
        patched = {ip: ep for ip, ep in prev.endpoints.items() if ip not in view.delta.endpoints}
        patched.update((ip, view.endpoints[ip]) for ip in view.delta.endpoints if ip in view.endpoints)
        assert patched == dict(view.endpoints)
        labels = lambda v, ip: v.identities.get(v.endpoints[ip].identity)  # noqa: E731
        for ip in set(prev.endpoints) & set(view.endpoints) - view.delta.endpoints:
            assert labels(prev, ip) == labels(view, ip), f"{ip}'s labels changed unannounced"
        assert view.delta.nodes or dict(prev.nodes) == dict(view.nodes)
        prev = view


def test_a_relist_says_it_cannot_tell_what_changed():
    m = Mirror("a")
    m.reset([], revision=1)
    first = m.view()
    m.reset([(layout.ip_key(_IPS[0]), layout.ip_value(300, "b"))], revision=5)
    assert m.view().delta is None and m.view().serial == first.serial + 1
