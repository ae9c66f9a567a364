"""Other nodes' endpoints as the compiler holds them (cluster mode): address
-> identity, and how many of them each identity has. They are peers only:
selectable, in the ipcache, never a subject of local policy. This module
turns a new picture of them (whole, or the addresses that changed) into the
steps the compiler takes, in order; it holds no policy. Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from policy.families import IPAddress


@dataclass(frozen=True, slots=True)
class Gone:
    """`addr` no longer has `identity` (`present`: it has another one now);
    `last`: that was the identity's last remote endpoint."""

    addr: IPAddress
    identity: int
    present: bool
    last: bool


@dataclass(frozen=True, slots=True)
class Came:
    """`addr` has `identity` (with `labels`) now; `first`: the identity's
    first remote endpoint."""

    addr: IPAddress
    identity: int
    labels: frozenset[str]
    first: bool


class RemoteEndpoints:
    def __init__(self) -> None:
        self.identity_of: dict[IPAddress, int] = {}
        self._refs: dict[int, int] = {}

    def holds(self, identity: int) -> bool:
        """Whether some other node's endpoint has this identity."""
        return identity in self._refs

    def update(
        self, endpoints: Mapping[IPAddress, tuple[int, frozenset[str]]], changed: Iterable[IPAddress] | None = None,
    ) -> Iterator[Gone | Came]:
        """Take `endpoints` (address -> identity, labels), whole; `changed`,
        when known: the only addresses that may differ from the last call
        (the rest is not compared). Yields the steps, every Gone before
        any Came, so an identity that moves between addresses is released
        before it is taken again (as the compiler's selectors expect)."""
        mine = self.identity_of
        if changed is None:
            gone = [(a, i) for a, i in mine.items() if (new := endpoints.get(a)) is None or new[0] != i]
            fresh: Iterable[tuple[IPAddress, tuple[int, frozenset[str]]]] = endpoints.items()
        else:
            gone = [(a, i) for a in changed if (i := mine.get(a)) is not None and ((new := endpoints.get(a)) is None or new[0] != i)]
            fresh = [(a, new) for a in changed if (new := endpoints.get(a)) is not None]
        for addr, ident in gone:
            del mine[addr]
            n = self._refs.pop(ident) - 1
            if n:
                self._refs[ident] = n
            yield Gone(addr, ident, addr in endpoints, n == 0)
        for addr, (ident, labels) in fresh:
            if mine.get(addr) == ident:
                continue
            mine[addr] = ident
            n = self._refs.get(ident, 0)
            self._refs[ident] = n + 1
            yield Came(addr, ident, labels, n == 0)
