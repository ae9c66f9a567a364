"""Retry delays and bounded waits for the kvstore loops. No I/O.

`asyncio.timeout()` rather than `asyncio.wait_for()` everywhere: on Python
3.11, wait_for() returns the inner result and drops a cancellation that
arrives as the inner awaitable completes, so a loop cancelled by
Cluster.stop() could keep running.
"""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """Doubling retry delay with jitter, capped."""

    def __init__(self, first: float = 0.05, cap: float = 1.0) -> None:
        self.first, self.cap = first, cap
        self._next = first

    def next(self) -> float:
        d = self._next
        self._next = min(self.cap, d * 2)
        return d * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self._next = self.first


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for `event` at most `timeout` seconds; True if it is set."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
