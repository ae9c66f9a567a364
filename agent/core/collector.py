"""When CPython's cycle collector runs in the agent process (the daemon
only: it changes process-wide settings).

A full collection walks every tracked object while holding the GIL, so the
event loop stalls for as long as it takes. CPython starts one on its own
whenever the objects that survived two young collections grew by a quarter,
which a large compile does several times while it runs in the compile
thread: a policy with 20,000 CIDRs stalled the loop 180-216 ms (the API, the
xDS server and the flow readers all waited), almost all in full
collections. Here:
- young collections stay as CPython runs them: they walk new objects only;
- automatic full collections are off (their threshold is out of reach);
- a full collection runs between regenerations, every second or, when one
  takes long (a large policy in memory), as often as keeps them under 2 %
  of the time: cyclic garbage is freed about as soon as CPython would (a
  minute apart, garbage piled up: +46 MiB at start and 48 KiB per
  endpoint instead of 16 in bench_e2e), at moments nothing waits on a
  compile;
- right after start-up (the first regenerations done) one full collection
  freezes what start-up built (modules, classes, the loaded policies): they
  mostly live for the process's life, and no later collection walks them
  (a frozen object is still freed when its last reference goes; only a
  cycle among frozen objects would stay).
No I/O.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

FULL_INTERVAL = 60.0  # seconds: the longest wait between full collections
MIN_INTERVAL = 1.0  # seconds: the shortest
SHARE = 0.02  # of the time, at most, spent in scheduled full collections
STARTUP_POLL = 0.1  # seconds between looks at whether start-up is done
BUSY_RETRY = 1.0  # seconds to wait while a regeneration is running
MAX_DEFERRALS = 10  # then collect anyway: garbage must not pile up under churn
CHEAP = 0.02  # seconds: a walk this short is not worth deferring
_UNREACHABLE = 1 << 30  # a gen-2 threshold no count of gen-1 collections reaches


def configure() -> None:
    """Keep CPython's young collections; turn its automatic full ones off."""
    gen0, gen1, _ = gc.get_threshold()
    gc.set_threshold(gen0, gen1, _UNREACHABLE)


def collect_full(freeze: bool = False) -> tuple[int, float]:
    """One full collection (objects freed, seconds); with `freeze`, what
    survives it is moved out of every later collection's walk."""
    t0 = time.perf_counter()
    freed = gc.collect()
    if freeze:
        gc.freeze()
    return freed, time.perf_counter() - t0


async def full_collections(
    busy: Callable[[], bool], started: Callable[[], bool] = lambda: True, interval: float = FULL_INTERVAL,
) -> None:
    """Run forever. Once `started()` and the first regenerations are done,
    one full collection that freezes what start-up built (the loaded
    policies among it: later walks skip them); then one a second, or less
    often when a walk takes long (at most SHARE of the time, at least one
    every `interval`), each deferred while `busy()` (a regeneration
    pending) up to MAX_DEFERRALS times."""
    while not started() or busy():
        await asyncio.sleep(STARTUP_POLL)
    freed, took = collect_full(freeze=True)
    log.info("start-up objects frozen out of the cycle collector's walks (%d freed first, %.0f ms)", freed, took * 1000)
    while True:
        # As often as CPython would, but never more than SHARE of the time:
        # a young heap is walked every second, one holding a 20k-CIDR
        # policy (~150 ms a walk) every few seconds.
        await asyncio.sleep(min(interval, max(MIN_INTERVAL, took / SHARE)))
        # A walk that takes long waits for a moment between regenerations; a
        # short one does not (waiting under churn let garbage pile up: 45
        # KiB per endpoint while 900 registered, 16 with CPython's schedule).
        for _ in range(MAX_DEFERRALS if took > CHEAP else 0):
            if not busy():
                break
            await asyncio.sleep(BUSY_RETRY)
        freed, took = collect_full()
        log.debug("full collection: %d objects freed in %.1f ms", freed, took * 1000)
