"""Which identities are due for garbage collection: the pure half of the GC.

Every agent runs the GC (no leader). Each pass lists the identities prefix
at one revision and feeds `scan()` with every id/<id> key's mod_revision
and the set of ids that have at least one refs/<id>/<node> key. An id with
no ref becomes a candidate remembered with (mod_revision, first time seen
unreferenced on the *local monotonic clock*). It is due once it has stayed
unreferenced with the same mod_revision for `grace` seconds. The deletion
itself (kvstore/identities.py) is conditioned on that mod_revision, and
every allocation or ref re-publication rewrites id/<id> in the same
transaction as its ref, so a reference taken at any point before the
delete commits makes the delete fail. No wall-clock time is stored in or
read from etcd, so a skewed clock or a slow etcd cannot make identities
flap. No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    mod_revision: int
    since: float  # time.monotonic() when first seen unreferenced at this mod_revision


class GcTracker:
    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.candidates: dict[int, Candidate] = {}

    def scan(self, ids: Mapping[int, int], referenced: Set[int], now: float) -> list[tuple[int, int]]:
        """ids: id -> mod_revision of id/<id>. Returns the due (id, mod_revision)
        pairs and updates the candidates."""
        due: list[tuple[int, int]] = []
        fresh: dict[int, Candidate] = {}
        for ident, mod in ids.items():
            if ident in referenced:
                continue
            seen = self.candidates.get(ident)
            if seen is None or seen.mod_revision != mod:
                seen = Candidate(mod, now)
            fresh[ident] = seen
            if now - seen.since >= self.grace:
                due.append((ident, mod))
        self.candidates = fresh
        return sorted(due)

    def forget(self, ident: int) -> None:
        self.candidates.pop(ident, None)
