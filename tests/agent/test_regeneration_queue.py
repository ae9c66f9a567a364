"""The coalescing queue on its own: bursts become one batch, revision is monotonic."""

from __future__ import annotations

import asyncio

from agent.core.regeneration_queue import Batch, RegenerationQueue


async def test_burst_while_idle_is_one_batch() -> None:
    seen: list[Batch] = []

    async def regen(b: Batch) -> None:
        seen.append(b)

    q = RegenerationQueue(regen)
    worker = asyncio.create_task(q.run())
    try:
        for i in range(100):
            q.mark([i % 7], reason=f"event {i}")
        q.mark(policy_changed=True)
        await q.drain(2)
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
    assert len(seen) == 1
    assert seen[0].endpoints == frozenset(range(7))
    assert seen[0].policy_changed and seen[0].revision == 1


async def test_events_during_a_batch_gather_into_the_next_one() -> None:
    seen: list[Batch] = []
    gate = asyncio.Event()

    async def regen(b: Batch) -> None:
        seen.append(b)
        if len(seen) == 1:
            await gate.wait()

    q = RegenerationQueue(regen)
    worker = asyncio.create_task(q.run())
    try:
        q.mark([1], policy_changed=True)
        while not seen:
            await asyncio.sleep(0)
        for i in range(2, 50):
            q.mark([i], policy_changed=True)
        gate.set()
        await q.drain(2)
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
    assert [b.endpoints for b in seen] == [frozenset({1}), frozenset(range(2, 50))]
    assert [b.revision for b in seen] == [1, 2]


async def test_a_failing_batch_does_not_stop_the_worker() -> None:
    seen: list[Batch] = []

    async def regen(b: Batch) -> None:
        seen.append(b)
        if len(seen) == 1:
            raise RuntimeError("boom")

    q = RegenerationQueue(regen)
    worker = asyncio.create_task(q.run())
    try:
        q.mark([1])
        await q.drain(2)
        q.mark([2])
        await q.drain(2)
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
    assert [set(b.endpoints) for b in seen] == [{1}, {2}]
    assert all(b.revision == 0 for b in seen)  # no policy change, no revision bump


async def test_a_ticket_waits_for_the_batch_that_carries_the_change_not_one_in_flight() -> None:
    # The audit-mode API race: a change marked while another batch is being
    # regenerated must not be reported done when that earlier batch ends.
    started, release = asyncio.Event(), asyncio.Event()
    seen: list[Batch] = []

    async def regen(b: Batch) -> None:
        seen.append(b)
        if len(seen) == 1:
            started.set()
            await release.wait()

    q = RegenerationQueue(regen)
    worker = asyncio.create_task(q.run())
    try:
        q.mark([1], reason="first")
        await started.wait()
        ticket = q.ticket()
        q.mark([2], reason="second, while the first is in flight")
        waiter = asyncio.create_task(q.wait_for(ticket, 5))
        release.set()
        assert await waiter
        assert [b.endpoints for b in seen] == [frozenset({1}), frozenset({2})]
        assert not await q.wait_for(ticket + 1, 0.05)  # nothing marked: no such batch yet
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
