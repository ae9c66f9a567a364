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
- right after start-up (the first regenerations done) one full collection
  freezes what start-up built (modules, classes, the loaded policies): they
  mostly live for the process's life;
- then, every second or as often as keeps them under 2 % of the time, a
  collection walks only what was built since the last one, and freezes what
  survives it: cyclic garbage among new objects is freed about as soon as
  CPython would, and the walk stays short whatever the agent holds (walking
  everything took 43-62 ms with 1,000 policies, and a policy change that
  arrived during one waited for it: the kernel p99 of bench_e2e);
- once a minute everything is unfrozen and walked (deferred while a
  regeneration is pending), so garbage cycles among older objects are freed
  too, at moments nothing waits on a compile. That walk stalls the loop
  for as long as the heap is large (~0.4 s at 50,000 remote pods, where it
  was the p99 of a remote pod's arrival), and it rarely finds anything: a
  walk of everything that frees fewer than WORTH_IT old objects (the
  start-up one included) doubles the wait for the next one, up to
  FULL_INTERVAL_MAX; one that frees more brings it back to a minute;
- and sooner, as CPython's own rule would have it, once the frozen objects
  grew by a quarter (GROWTH, and at least GROWTH_MIN objects) since the
  last walk of everything. What a walk of new objects freezes includes the
  temporaries of work in flight at that moment (a regeneration's, a
  netlink dump's); when they die later as cycles, only a walk of
  everything frees them. Without this bound, 500 endpoints registered one
  after the other left 25 MiB of such cycles (186,000 objects, four times
  what the endpoints themselves hold) waiting up to FULL_INTERVAL_MAX. The
  walks it brings cost in proportion to what grew, as CPython's do.
  Counting the frozen objects walks their list, so it is done at most
  COUNT_SHARE of the time (every ~10 s at 50,000 remote pods, every second
  on a small node).
A frozen object is still freed as soon as its last reference goes; only a
cycle among frozen objects waits for a walk of everything.
No I/O.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

FULL_INTERVAL = 60.0  # seconds between walks of everything (frozen objects included), at first
FULL_INTERVAL_MAX = 960.0  # seconds: the longest wait, once such walks keep finding (almost) nothing
WORTH_IT = 1000  # old objects a walk of everything must free for the next to come as soon
SLOW_WALK = 0.1  # seconds: a walk of everything longer than this is logged (the loop stood still)
MIN_INTERVAL = 1.0  # seconds: the shortest wait between walks
SHARE = 0.02  # of the time, at most, spent in the walks of new objects
STARTUP_POLL = 0.1  # seconds between looks at whether start-up is done
BUSY_RETRY = 1.0  # seconds a walk of everything waits while a regeneration is pending
MAX_DEFERRALS = 10  # then walk anyway: garbage must not pile up under churn
_UNREACHABLE = 1 << 30  # a gen-2 threshold no count of gen-1 collections reaches
GROWTH = 0.25  # frozen objects grown by this share since the last walk of everything: walk everything
GROWTH_MIN = 10_000  # ... and by at least this many objects
# Counting the frozen objects walks their list (35 ms at 3 million, what
# 50,000 remote pods make): done every second it doubled the agent's CPU in
# bench_cluster. It is counted at most this share of the time.
COUNT_SHARE = 0.005


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
    max_interval: float = FULL_INTERVAL_MAX,
) -> None:
    """Run forever. Once `started()` and the first regenerations are done,
    one full collection that freezes what start-up built; then a walk of
    what is new every second (or less often when one takes long: at most
    SHARE of the time), freezing its survivors, and a walk of everything
    every `interval` (twice as far apart after each that freed fewer than
    WORTH_IT old objects, up to `max_interval`), deferred while `busy()`
    (a regeneration pending) up to MAX_DEFERRALS times."""
    while not started() or busy():
        await asyncio.sleep(STARTUP_POLL)
    freed, took = collect_full(freeze=True)
    log.info("start-up objects frozen out of the cycle collector's walks (%d freed first, %.0f ms)", freed, took * 1000)
    clock = time.monotonic
    last_whole = clock()
    spacing = interval if freed >= WORTH_IT else min(max_interval, interval * 2)  # that was a walk of everything too
    walked, count_every = _count_frozen()
    next_count = time.perf_counter() + count_every
    while True:
        await asyncio.sleep(min(interval, max(MIN_INTERVAL, took / SHARE)))
        whole = clock() - last_whole >= spacing
        if not whole and time.perf_counter() >= next_count:
            frozen, count_every = _count_frozen()
            next_count = time.perf_counter() + count_every
            grown = frozen - walked
            whole = grown >= GROWTH_MIN and grown > walked * GROWTH
        if not whole:
            freed, took = collect_full(freeze=True)
            log.debug("young collection: %d objects freed in %.1f ms", freed, took * 1000)
            continue
        # A walk of everything is long with a large state: it waits for
        # a moment between regenerations.
        for _ in range(MAX_DEFERRALS):
            if not busy():
                break
            await asyncio.sleep(BUSY_RETRY)
        collect_full(freeze=True)  # new objects first, so what the whole walk frees is old
        gc.unfreeze()
        last_whole = clock()
        freed, whole_took = collect_full(freeze=True)
        walked, count_every = _count_frozen()
        next_count = time.perf_counter() + count_every
        spacing = interval if freed >= WORTH_IT else min(max_interval, spacing * 2)
        log.log(
            logging.INFO if whole_took >= SLOW_WALK else logging.DEBUG,
            "walk of everything: %d old objects freed in %.0f ms (the loop waited); next in %.0f s", freed, whole_took * 1000, spacing,
        )


def _count_frozen() -> tuple[int, float]:
    """The frozen objects, and how long to wait before counting them again
    (COUNT_SHARE of the time at most)."""
    t0 = time.perf_counter()
    n = gc.get_freeze_count()
    return n, max(MIN_INTERVAL, (time.perf_counter() - t0) / COUNT_SHARE)
