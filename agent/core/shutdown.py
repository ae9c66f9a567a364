"""Waits that a stop always gets through, for the tasks the agent and its
adapters run.

On Python 3.11, `asyncio.wait_for(aw, timeout)` swallows a cancel that
lands in the same loop tick as `aw` finishing (CPython gh-86296, fixed by
3.12's rewrite): it returns the result and the task carries on. A loop that
sleeps that way on an Event (woken by another thread or task) then ignores
the stop that cancelled it, and whoever awaits it after the cancel waits
forever. wait_event() is the cancel-safe form. stop_tasks() bounds the wait
anyway: a task may still ignore its cancel (a library doing the above, a
broad except), and a stop that never returns leaves a node whose agent
cannot be restarted. No I/O.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until `event` is set, at most `timeout` seconds (None: no limit);
    False on timeout. A cancel always propagates."""
    if timeout is None:
        await event.wait()
        return True
    try:
        # asyncio.timeout tells its own expiry from a cancel from outside
        # (Task.uncancel), which wait_for on 3.11 does not.
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def stop_tasks(tasks: Iterable[asyncio.Task[Any]], timeout: float, what: str) -> list[asyncio.Task[Any]]:
    """Cancel `tasks` and wait at most `timeout` seconds for them to end.
    Returns those still running, after a warning that names them: the caller
    goes on stopping the rest rather than hang on one."""
    tasks = list(tasks)
    for t in tasks:
        t.cancel()
    if not tasks:
        return []
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            log.debug("%s %s ended with %r", what, t.get_name(), t.exception())
    if pending:
        log.warning("%s still running %.1fs after being cancelled, left behind: %s",
                    what, timeout, ", ".join(sorted(t.get_name() for t in pending)))
    return sorted(pending, key=lambda t: t.get_name())
