"""The agent's cycle-collector schedule (agent/core/collector.py): no
automatic full collection, yet cyclic garbage is still freed, and not while
a regeneration runs. Changes process-wide GC settings: each test restores
them."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref

import pytest

from agent.core import collector


@pytest.fixture
def gc_settings():
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)
    gc.unfreeze()


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _old_cycle() -> weakref.ref:
    """A reference cycle that became garbage only once in the oldest
    generation, where only a full collection looks."""
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    held = [a]
    for _ in range(3):
        gc.collect(1)  # survivors of a gen-1 collection move to gen 2
    ref = weakref.ref(a)
    del a, b
    held.clear()
    return ref


async def test_cyclic_garbage_is_freed_on_schedule_and_not_while_busy(gc_settings, monkeypatch) -> None:
    monkeypatch.setattr(collector, "BUSY_RETRY", 0.01)
    monkeypatch.setattr(collector, "MAX_DEFERRALS", 10_000)
    collector.configure()
    assert gc.get_threshold()[2] >= 1 << 30, "automatic full collections are off"
    gc.collect()
    garbage = _old_cycle()
    for _ in range(3):
        gc.collect(1)
    assert garbage() is not None, "young collections do not reach it"
    busy, started = True, False
    task = asyncio.create_task(collector.full_collections(lambda: busy, lambda: started, interval=0.01))
    try:
        await asyncio.sleep(0.2)
        assert garbage() is not None and gc.get_freeze_count() == 0, "nothing before start-up is done"
        started = True
        await asyncio.sleep(0.2)
        assert garbage() is not None, "no full collection while a regeneration is pending"
        busy = False
        for _ in range(500):
            if garbage() is None:
                break
            await asyncio.sleep(0.01)
        assert garbage() is None, "freed once idle"
        assert gc.get_freeze_count() > 0, "start-up objects are frozen out of later walks"
        later = _old_cycle()
        for _ in range(500):
            if later() is None:
                break
            await asyncio.sleep(0.01)
        assert later() is None, "the scheduled collections go on after the first"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    perf_counter = staticmethod(time.perf_counter)  # the walks still time themselves


async def _until(cond, what: str) -> None:
    for _ in range(500):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_walks_of_new_objects_do_not_wait_and_frozen_cycles_wait_for_the_whole_walk(gc_settings, monkeypatch) -> None:
    """Under constant churn a regeneration is nearly always pending: the
    short walks of new objects run anyway (garbage piled up when they
    waited: 45 KiB per endpoint while 900 registered). A cycle among objects
    frozen by an earlier walk is freed only by the walk of everything, once
    per `interval`, and that walk waits for an idle moment."""
    clock = _Clock()
    monkeypatch.setattr(collector, "time", clock)
    monkeypatch.setattr(collector, "MIN_INTERVAL", 0.01)
    # The spacing follows the last walk's length, which grows with the test
    # process's heap (a whole pytest worker's): keep it at MIN_INTERVAL.
    monkeypatch.setattr(collector, "SHARE", 1e9)
    monkeypatch.setattr(collector, "BUSY_RETRY", 0.01)
    monkeypatch.setattr(collector, "MAX_DEFERRALS", 10_000)
    collector.configure()
    busy = False
    task = asyncio.create_task(collector.full_collections(lambda: busy, interval=60.0, max_interval=60.0))
    try:
        await _until(lambda: gc.get_freeze_count() > 0, "the start-up freeze")
        busy = True  # from now on a regeneration is always pending
        frozen = gc.get_freeze_count()
        kept = [[] for _ in range(1000)]  # survivors: the walk freezes them out of the next ones
        young = _old_cycle()
        await _until(lambda: young() is None, "a walk of new objects to free a young cycle")
        assert gc.get_freeze_count() >= frozen + len(kept)

        old = _old_cycle()
        gc.freeze()  # as a walk does to what survives it
        young = _old_cycle()
        await _until(lambda: young() is None, "the next walk of new objects")
        assert old() is not None, "frozen objects are not walked before the minute is up"

        clock.now += 61.0  # the minute is up, but a regeneration is pending
        young = _old_cycle()
        await asyncio.sleep(0.2)
        assert old() is not None and young() is not None, "the walk of everything waits for an idle moment"
        busy = False
        await _until(lambda: old() is None, "the walk of everything to free the frozen cycle")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_walks_of_everything_that_find_little_come_less_often_and_one_that_finds_much_resets(gc_settings, monkeypatch) -> None:
    """The walk of everything stalls the loop for as long as the heap is
    large; when it frees (almost) nothing the next comes twice as late, up
    to max_interval; when it frees at least WORTH_IT, a minute again."""
    clock = _Clock()
    monkeypatch.setattr(collector, "time", clock)
    monkeypatch.setattr(collector, "MIN_INTERVAL", 0.01)
    monkeypatch.setattr(collector, "SHARE", 1e9)
    monkeypatch.setattr(collector, "WORTH_IT", 10_000_000)  # a frozen cycle or two is "little"
    collector.configure()
    task = asyncio.create_task(collector.full_collections(lambda: False, interval=60.0, max_interval=120.0))

    async def frozen_cycle_freed_after(advance: float) -> bool:
        old = _old_cycle()
        gc.freeze()
        clock.now += advance
        # Two collector turns after the clock moved (each frees a new cycle):
        # a walk of everything due by then has run.
        for turn in range(2):
            young = _old_cycle()
            await _until(lambda: young() is None, f"collector turn {turn + 1}")
        return old() is None

    try:
        await _until(lambda: gc.get_freeze_count() > 0, "the start-up freeze")
        # The start-up freeze walked everything, and found little.
        assert not await frozen_cycle_freed_after(61.0), "little found at start-up: the next one waits two minutes"
        assert await frozen_cycle_freed_after(60.0)
        assert not await frozen_cycle_freed_after(61.0), "little found: the next one waits two minutes"
        assert await frozen_cycle_freed_after(60.0)
        assert not await frozen_cycle_freed_after(61.0)
        assert await frozen_cycle_freed_after(60.0), "never later than max_interval"
        monkeypatch.setattr(collector, "WORTH_IT", 1)
        assert not await frozen_cycle_freed_after(61.0)
        assert await frozen_cycle_freed_after(60.0), "this one finds something ..."
        assert await frozen_cycle_freed_after(61.0), "... so the next is a minute later again"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("growth, freed", [(0.25, True), (1e9, False)])
async def test_frozen_objects_grown_by_a_quarter_bring_the_walk_of_everything_forward(gc_settings, monkeypatch, growth, freed) -> None:
    """Cycles frozen while alive (a regeneration's temporaries in flight at a
    walk of new objects) and dead since then wait for a walk of everything.
    Once the frozen objects grew by GROWTH since the last one, it comes
    without waiting for its interval (the clock here never moves); with the
    bound out of reach, the same garbage stays (the control)."""
    clock = _Clock()
    monkeypatch.setattr(collector, "time", clock)
    monkeypatch.setattr(collector, "MIN_INTERVAL", 0.01)
    monkeypatch.setattr(collector, "SHARE", 1e9)
    monkeypatch.setattr(collector, "GROWTH", growth)
    monkeypatch.setattr(collector, "GROWTH_MIN", 100)
    monkeypatch.setattr(collector, "COUNT_SHARE", 1e9)  # the frozen objects counted at every turn
    collector.configure()
    task = asyncio.create_task(collector.full_collections(lambda: False, interval=60.0, max_interval=960.0))
    try:
        await _until(lambda: gc.get_freeze_count() > 0, "the start-up freeze")
        base = gc.get_freeze_count()
        # More cycles than a quarter of what is frozen, frozen alive, then garbage.
        pairs = []
        for _ in range(base // 3 + 1000):
            a, b = _Node(), _Node()
            a.other, b.other = b, a
            pairs.append(a)
        first = weakref.ref(pairs[0])
        gc.freeze()  # as a walk of new objects does, with no await before they die
        pairs.clear()
        for turn in range(3):
            young = _old_cycle()
            await _until(lambda: young() is None, f"collector turn {turn + 1}")
        assert (first() is None) is freed
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_the_frozen_objects_are_counted_no_more_than_their_share_of_the_time(gc_settings, monkeypatch) -> None:
    """Counting walks the frozen list: a large heap is counted less often."""
    ticks = iter([0.0, 0.05])  # one count that took 50 ms

    class _Perf:
        monotonic = staticmethod(time.monotonic)

        @staticmethod
        def perf_counter() -> float:
            return next(ticks)

    monkeypatch.setattr(collector, "time", _Perf)
    monkeypatch.setattr(collector, "COUNT_SHARE", 0.005)
    _, every = collector._count_frozen()
    assert every == pytest.approx(10.0)

