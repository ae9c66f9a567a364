"""The agent's cycle-collector schedule (agent/core/collector.py): no
automatic full collection, yet cyclic garbage is still freed, and not while
a regeneration runs. Changes process-wide GC settings: each test restores
them."""

from __future__ import annotations

import asyncio
import gc
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
    monkeypatch.setattr(collector, "CHEAP", -1.0)  # every walk counts as long: they wait for idle moments
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


async def test_a_short_walk_does_not_wait_for_an_idle_moment(gc_settings, monkeypatch) -> None:
    """Under constant churn a regeneration is nearly always pending; a walk
    that is cheap runs anyway, or garbage piles up (it did: 45 KiB per
    endpoint while 900 registered)."""
    monkeypatch.setattr(collector, "CHEAP", 10.0)
    monkeypatch.setattr(collector, "BUSY_RETRY", 10.0)
    collector.configure()
    busy = False
    task = asyncio.create_task(collector.full_collections(lambda: busy, interval=0.01))
    try:
        for _ in range(500):
            if gc.get_freeze_count():
                break
            await asyncio.sleep(0.01)
        busy = True  # from now on a regeneration is always pending
        garbage = _old_cycle()
        for _ in range(500):
            if garbage() is None:
                break
            await asyncio.sleep(0.01)
        assert garbage() is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
