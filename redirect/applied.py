"""What this process last wrote into the kernel maps, so that the next
apply writes only the difference (redirect/reconcile.py's `ipcache_changes`
and `unchanged`): in a cluster, one remote pod event would otherwise cost a
read-back of every remote pod's ipcache entry and every endpoint's policy
map. Trusted only as far as it can be: the first apply, one after a
failure, a state not counted from the one applied last, and one at least
every FULL_RESYNC seconds compare every map with what the kernel holds,
which repairs anything written behind this process's back. Pure: no I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from policy.compiled import CompiledState, EndpointPolicy

FULL_RESYNC = 60.0  # seconds: every map read back and compared at least this often


class AppliedMemory:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._eps: dict[int, EndpointPolicy] = {}  # endpoint id -> the policy its map holds
        self._ipcache: object | None = None  # the ipcache table the kernel holds
        self._revision = 0  # of the state that table came with
        self._full_due = 0.0

    def plan(self, state: CompiledState) -> tuple[bool, frozenset | None, frozenset[int]]:
        """(full, ipcache prefixes that may differ or None: compare all,
        endpoints whose policy map already holds their entries). Forgets
        what it knew: until recorded(), the kernel is in doubt."""
        full = self._clock() >= self._full_due
        if full:
            changes, unchanged = None, frozenset()
        else:
            changes = frozenset() if state.ipcache is self._ipcache else state.ipcache_changes_since(self._revision)
            unchanged = frozenset(i for i, ep in state.endpoints.items() if self._eps.get(i) is ep)
        self._eps, self._ipcache, self._revision = {}, None, 0
        return full, changes, unchanged

    def recorded(self, state: CompiledState, applied: set[int], full: bool) -> None:
        """The apply of `state` went through for the endpoints `applied`."""
        self._eps = {i: state.endpoints[i] for i in applied}
        self._ipcache, self._revision = state.ipcache, state.revision
        if full:
            self._full_due = self._clock() + FULL_RESYNC

    def forget_endpoint(self, endpoint_id: int) -> None:
        """Its maps were (re)made: read them back at the next apply."""
        self._eps.pop(endpoint_id, None)

    def resync(self) -> None:
        """Compare every map at the next apply."""
        self._full_due = 0.0
