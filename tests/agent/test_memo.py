"""agent/core/memo.py: when the last answer is given again, and when not."""

from __future__ import annotations

from agent.core.memo import Memo


def _counting() -> tuple[Memo[int], list[int]]:
    return Memo(), []


def test_the_same_objects_and_equal_values_give_the_last_answer() -> None:
    memo, calls = _counting()
    book, errors = {"p": 1}, (("k", "bad"),)
    assert memo.get((book,), errors, lambda: calls.append(1) or len(calls)) == 1
    assert memo.get((book,), (("k", "bad"),), lambda: calls.append(1) or len(calls)) == 1
    assert calls == [1]


def test_an_equal_but_new_object_is_a_change() -> None:
    # Identity inputs are never compared by value: a rebuilt book that
    # happens to be equal is still asked again (the comparison would cost
    # what the memo saves).
    memo, calls = _counting()
    memo.get(({"p": 1},), (), lambda: calls.append(1) or len(calls))
    assert memo.get(({"p": 1},), (), lambda: calls.append(1) or len(calls)) == 2


def test_a_changed_value_is_a_change() -> None:
    memo, calls = _counting()
    book = {"p": 1}
    memo.get((book,), ((1, "ready"),), lambda: calls.append(1) or len(calls))
    assert memo.get((book,), ((1, "not-ready"),), lambda: calls.append(1) or len(calls)) == 2
    assert memo.get((book,), ((1, "not-ready"), (2, "ready")), lambda: calls.append(1) or len(calls)) == 3


def test_a_changed_object_is_a_change_even_when_mutated_back() -> None:
    memo, calls = _counting()
    a, b = object(), object()
    memo.get((a,), (), lambda: calls.append(1) or len(calls))
    memo.get((b,), (), lambda: calls.append(1) or len(calls))
    assert memo.get((a,), (), lambda: calls.append(1) or len(calls)) == 3
