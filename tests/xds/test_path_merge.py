"""Merging path regexes (xds/path_merge.py) never changes which paths a peer set
may use: the merged alternation full-matches exactly when one of the original
regexes does (checked with RE2 itself, the engine Envoy uses)."""

from __future__ import annotations

import re2
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.compiled import HeaderMatch, HTTPRule
from xds.path_merge import PathMerger, alternation as _alternation, balanced as _balanced

PIECES = ["/a", "/b", "x", "1", ".*", "(/.*)?", "[ab]+", "(x|y)", "\\d", "b?", "[^/]*", "/", "a{2}"]
paths = st.lists(st.sampled_from(PIECES), min_size=1, max_size=4).map("".join)
# Whole-path alternations exercise the no-factoring branch.
path_regexes = st.one_of(paths, st.tuples(paths, paths).map(lambda t: f"{t[0]}|{t[1]}"))
subjects = st.text(alphabet="/abxy1", max_size=8)


@settings(max_examples=300, deadline=None)
@given(st.lists(path_regexes, min_size=2, max_size=6, unique=True), st.lists(subjects, min_size=1, max_size=20))
def test_merged_alternation_matches_exactly_the_union(regexes, strings):
    merged = re2.compile(_alternation(regexes))
    originals = [re2.compile(r) for r in regexes]
    for s in strings:
        want = any(o.fullmatch(s) is not None for o in originals)
        assert (merged.fullmatch(s) is not None) == want, (regexes, s, _alternation(regexes))


def test_balance_check_table():
    cases = {"/a(b)?": True, "a)|(b": False, "[)]x": True, "[^)]": True, "\\)": True, "x(": False, "[]()]": True,
             ")(": False, "/x/(a|b)(/.*)?": True, "((a)": False}
    assert {k: _balanced(k) for k in cases} == cases


rule_lists = st.lists(
    st.builds(
        lambda m, p, h: HTTPRule(method=m, path=p, headers=h),
        st.sampled_from([None, "GET", "GET|HEAD"]),
        st.one_of(st.none(), paths),
        st.sampled_from([(), (HeaderMatch("x-team", "a"),), (HeaderMatch("x-team", "b"),)]),
    ),
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(rule_lists, min_size=1, max_size=5))
def test_a_merger_that_remembers_groups_merges_as_a_fresh_one(sequence):
    """The memo keyed by each group's paths never hands back a stale merge:
    every render of a changing rule list equals a merge from scratch."""
    kept = PathMerger()
    for rules in sequence:
        assert kept.merge(rules) == PathMerger().merge(rules)
