"""The last answer of a costly read, kept while its inputs stay the same.

A read such as every policy's status walks every policy; a metrics scrape
and the Kubernetes status write-back both ask for it, and with a thousand
policies each walk held the event loop 5-15 ms, also when nothing had
changed since the last one. Inputs come in two kinds: objects the agent
replaces whole when they change (the book's policies in force, the last
compiled state), compared by identity, which is cheap whatever their size;
and small values (compile errors, each endpoint's live state), compared by
value. The memo holds references to the inputs, so an identity is never
that of a later, different object. Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class Memo(Generic[T]):
    def __init__(self) -> None:
        self._same: Sequence[object] | None = None
        self._equal: Sequence[object] = ()
        self._value: T | None = None

    def get(self, same: Sequence[object], equal: Sequence[object], compute: Callable[[], T]) -> T:
        """`compute()`, or its last result when every `same` input is the
        very object it was then and every `equal` input equals its value then."""
        if (
            self._same is not None
            and len(same) == len(self._same)
            and all(a is b for a, b in zip(same, self._same))
            and tuple(equal) == tuple(self._equal)
        ):
            return self._value  # type: ignore[return-value]
        value = compute()
        self._same, self._equal, self._value = tuple(same), tuple(equal), value
        return value
