"""matchName / matchPattern as Cilium documents them (policy/dns_names.py)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.dns_names import (
    DNSNameError,
    NameSelector,
    canonical,
    check_match_name,
    check_match_pattern,
    pattern_matches,
)

CASES = [
    # pattern, matches, does not match
    ("example.com", ["example.com", "EXAMPLE.com.", "example.com."], ["a.example.com", "example.co", "example.com.x"]),
    ("*.example.com", ["a.example.com", "A-1.Example.COM.", "_svc.example.com"], ["example.com", "a.b.example.com", "aexample.com"]),
    ("ci*.io", ["cilium.io", "ci.io", "cixyz.io."], ["a.cilium.io", "xci.io", "cilium.org"]),
    ("*.ci*.io", ["a.cilium.io", "a.ci.io"], ["cilium.io", "a.b.cilium.io"]),
    ("**.example.com", ["a.example.com", "a.b.c.example.com", "_x._tcp.example.com"], ["example.com", "aexample.com", "a.example.org"]),
    ("*.**.example.com", ["a.b.example.com", "a.b.c.example.com"], ["a.example.com", "example.com"]),
    ("api.**.test", ["api.x.test", "api.x.y.test"], ["api.test", "x.api.y.test"]),
    ("*", [".", "io", "a.b.c", "_x._tcp.example.com"], []),
    ("**", [".", "io", "a.b.c"], []),
]


@pytest.mark.parametrize("pattern, yes, no", CASES, ids=[c[0] for c in CASES])
def test_patterns_match_as_documented(pattern, yes, no):
    p = check_match_pattern(pattern)
    for name in yes:
        assert pattern_matches(p, name), (pattern, name)
    for name in no:
        assert not pattern_matches(p, name), (pattern, name)


def test_names_compare_case_and_trailing_dot_insensitively():
    sel = NameSelector(match_name=check_match_name("Allowed.Test"))
    assert sel.match_name == "allowed.test."
    for n in ("allowed.test", "ALLOWED.TEST.", "allowed.test."):
        assert sel.matches(n)
    assert not sel.matches("other.test") and not sel.matches("allowed.test.evil")
    assert canonical("..") == "." and canonical("A.b..") == "a.b."


@pytest.mark.parametrize("bad, why", [
    ("", "non-empty"),
    ("exa mple.com", "may contain only"),
    ("a..b", "empty label"),
    (".a.b", "empty label"),
    ("x" * 64 + ".com", "longer than 63"),
    ("a." * 127 + "com", "longer than 253"),
    ("exa$mple.com", "may contain only"),
])
def test_bad_match_names_are_refused_with_a_reason(bad, why):
    with pytest.raises(DNSNameError, match=why):
        check_match_name(bad)


@pytest.mark.parametrize("bad, why", [
    ("", "non-empty"),
    ("[a-z].com", "may contain only"),
    ("a+.com", "may contain only"),
    ("***.com", "at most two"),
    ("a..*", "empty label"),
])
def test_bad_match_patterns_are_refused_with_a_reason(bad, why):
    with pytest.raises(DNSNameError, match=why):
        check_match_pattern(bad)


def test_names_a_pod_sends_cannot_widen_a_pattern():
    p = check_match_pattern("*.example.com")
    # Empty labels, escaped dots and other bytes in dnspython's text form.
    for hostile in (".example.com", "a\\.b.example.com", "a\\000.example.com", "*.example.com", "a example.com"):
        assert not pattern_matches(p, hostile), hostile


def test_a_hostile_name_does_not_make_matching_slow():
    p = check_match_pattern("**.**.**.**.x")
    name = ".".join(["a"] * 120) + ".y"
    t = time.process_time()
    assert not pattern_matches(p, name)
    # RE2 is linear; a backtracking engine takes minutes here. The bound
    # only guards against a hang.
    assert time.process_time() - t < 5


labels = st.text(alphabet="abc-_1", min_size=1, max_size=4).filter(lambda s: not s.startswith("-"))
names = st.lists(labels, min_size=1, max_size=5).map(".".join)


@settings(max_examples=300, deadline=None)
@given(names, names)
def test_star_dot_suffix_is_exactly_one_more_label(suffix, name):
    p = check_match_pattern("*." + suffix)
    want = name.endswith("." + suffix) and "." not in name[: -len(suffix) - 1]
    assert pattern_matches(p, name) == want


@settings(max_examples=300, deadline=None)
@given(names, names)
def test_double_star_dot_suffix_is_one_or_more_labels(suffix, name):
    p = check_match_pattern("**." + suffix)
    assert pattern_matches(p, name) == name.endswith("." + suffix)
