"""The coalescing regeneration queue: a dirty set, one worker, a revision.

Events (an endpoint created or deleted, a policy file changed, a retry due)
only mark things dirty; one worker takes everything dirty at once and hands it
to the regenerate callback as a single batch, so a burst of a hundred changes
costs one compile rather than a hundred. The policy revision is monotonic and
bumped once per batch that carried a policy change. No I/O of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Batch:
    endpoints: frozenset[int]
    policy_changed: bool
    revision: int
    reasons: tuple[str, ...]


class RegenerationQueue:
    def __init__(self, regenerate: Callable[[Batch], Awaitable[None]], *, settle: float = 0.0, revision: int = 0) -> None:
        """`settle`: how long the worker lingers after the first event to let a burst gather."""
        self._regenerate = regenerate
        self._settle = settle
        self._dirty: set[int] = set()
        self._policy_dirty = False
        self._reasons: list[str] = []
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.revision = revision
        self.batches = 0  # batches finished
        self._taken = 0  # batches handed to the worker
        self._finished = asyncio.Condition()

    def mark(self, endpoints: Iterable[int] = (), *, policy_changed: bool = False, reason: str = "") -> None:
        self._dirty.update(endpoints)
        self._policy_dirty |= policy_changed
        if reason and len(self._reasons) < 32:
            self._reasons.append(reason)
        if self._dirty or self._policy_dirty:
            self._idle.clear()
            self._wakeup.set()

    def mark_later(self, delay: float, endpoints: Iterable[int], reason: str) -> asyncio.TimerHandle:
        ids = tuple(endpoints)
        return asyncio.get_running_loop().call_later(delay, lambda: self.mark(ids, reason=reason))

    @property
    def pending(self) -> bool:
        return not self._idle.is_set()

    def ticket(self) -> int:
        """The number of the batch that will carry what is marked from now on.
        (A batch already being regenerated was snapshotted before the mark.)"""
        return self._taken + 1

    async def wait_for(self, ticket: int, timeout: float) -> bool:
        """Wait until batch `ticket` has been regenerated; False on timeout."""
        async with self._finished:
            try:
                await asyncio.wait_for(self._finished.wait_for(lambda: self.batches >= ticket), timeout)
            except TimeoutError:
                return False
        return True

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every marked change has been regenerated."""
        await asyncio.wait_for(self._idle.wait(), timeout)

    def _take(self) -> Batch:
        if self._policy_dirty:
            self.revision += 1
        batch = Batch(frozenset(self._dirty), self._policy_dirty, self.revision, tuple(self._reasons))
        self._dirty.clear()
        self._policy_dirty = False
        self._reasons.clear()
        self._wakeup.clear()
        self._taken += 1
        return batch

    async def run(self) -> None:
        while True:
            await self._wakeup.wait()
            if self._settle:
                await asyncio.sleep(self._settle)
            batch = self._take()
            try:
                await self._regenerate(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # the worker must outlive one bad batch
                log.exception("regeneration of %s failed", sorted(batch.endpoints) or "policies")
            finally:
                self.batches += 1
                async with self._finished:
                    self._finished.notify_all()
            if not self._wakeup.is_set():
                self._idle.set()
