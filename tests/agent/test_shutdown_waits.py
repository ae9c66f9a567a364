"""The waits a stop gets through (agent/core/shutdown.py): a cancel that meets
a wake in the same loop tick still ends the waiting loop, and a task that
ignores its cancel is left behind, named, instead of hanging the stop."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agent.core.shutdown import stop_tasks, wait_event


async def _wake_loop(event: asyncio.Event, timeout: float | None) -> None:
    """The shape of the status writer and the policy directory watcher."""
    while True:
        await wait_event(event, timeout)
        event.clear()


@pytest.mark.parametrize("timeout", [1.0, None], ids=["timed", "untimed"])
async def test_a_cancel_in_the_same_tick_as_a_wake_ends_the_loop(timeout: float | None) -> None:
    # asyncio.wait_for(event.wait(), 1.0) on Python 3.11 swallows this cancel.
    event = asyncio.Event()
    task = asyncio.create_task(_wake_loop(event, timeout))
    await asyncio.sleep(0)  # the loop is now waiting
    event.set()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=30)  # a hang guard
    assert task in done and task.cancelled()


async def test_wait_event_says_whether_the_event_came() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True


async def test_stop_tasks_leaves_behind_a_task_that_ignores_its_cancel_and_names_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agent.core.shutdown")
    release = asyncio.Event()

    async def deaf() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    polite = asyncio.create_task(asyncio.sleep(3600), name="polite")
    stubborn = asyncio.create_task(deaf(), name="stubborn")
    await asyncio.sleep(0)
    left = await stop_tasks([polite, stubborn], 0.2, "test tasks")
    assert left == [stubborn] and polite.cancelled()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "stubborn" in warnings[0] and "polite" not in warnings[0]
    release.set()
    await stubborn
