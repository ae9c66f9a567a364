"""The process-wide RE2 check shared by the policy loader and the xDS
renderer's path merging."""

from __future__ import annotations

import pytest

from policy import re2_check
from policy.api.http import compile_regex


def test_valid_singles_out_the_invalid_patterns_of_a_batch() -> None:
    pats = ["/a/[0-9]+", "/b(/.*)?", "/c{2,1}", "/d\\", "/e"]
    assert re2_check.valid(pats) == [True, True, False, False, True]
    assert "invalid RE2 regex '/c{2,1}'" in (re2_check.problem("/c{2,1}") or "")


def test_patterns_the_loader_checked_are_not_compiled_again(monkeypatch: pytest.MonkeyPatch) -> None:
    assert compile_regex("/loaded/[a-z]+") is None
    assert compile_regex("/loaded/(") is not None

    def no_compile(pattern: str) -> str | None:
        raise AssertionError(f"compiled again: {pattern}")

    monkeypatch.setattr(re2_check, "_compile", no_compile)
    assert re2_check.valid(["/loaded/[a-z]+", "/loaded/("]) == [True, False]
    with pytest.raises(AssertionError, match="compiled again"):
        re2_check.valid(["/never/seen", "/never/seen/either"])


def test_the_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(re2_check, "_LIMIT", 8)
    for i in range(50):
        assert re2_check.problem(f"/bounded/{i}") is None
    assert len(re2_check._checked) <= 8
    assert re2_check.problem("/bounded/(") is not None  # still answers after a flush
