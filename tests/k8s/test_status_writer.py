"""The policy status writer on its own (agent/adapters/kubernetes/node_status.py):
how a pass over many objects shares the event loop, keeps to the node's
write rate, and gives way to newer state. The patches are recorded, not
sent; the API-server path is in test_k8s_resilience.py."""

from __future__ import annotations

import asyncio
from typing import Any

from agent.adapters.kubernetes.node_status import StatusWriter, Target
from agent.core.models import PolicyStatus

NODE = "node-a"
KIND = "CiliumNetworkPolicy"


def _obj(name: str, entry: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": name, "namespace": "default", "generation": 1}}
    if entry is not None:
        obj["status"] = {"nodes": {NODE: entry}}
    return obj


def _status(name: str, state: str = "enforced") -> PolicyStatus:
    return PolicyStatus(name=f"default/{name}", kind=KIND, source=f"k8s:{KIND}/default/{name}", state=state, revision=3)


WRITTEN = {"ok": True, "enforcing": True, "localPolicyRevision": 3, "observedGeneration": 1}


def _world(n: int, written: bool) -> tuple[dict[str, PolicyStatus], list[Target]]:
    names = [f"p{i}" for i in range(n)]
    statuses = {f"k8s:{KIND}/default/{x}": _status(x) for x in names}
    targets = [(KIND, f"k8s:{KIND}/default/{x}", _obj(x, dict(WRITTEN) if written else None)) for x in names]
    return statuses, targets


class Patches:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, kind: str, namespace: str | None, name: str, body: dict[str, Any]) -> None:
        self.calls.append((name, body["status"]["nodes"][NODE]))


async def test_a_pass_over_a_thousand_objects_lets_other_work_run_before_it_ends() -> None:
    statuses, targets = _world(1000, written=True)  # nothing to write: the pass only compares
    writer = StatusWriter(NODE, Patches(), interval=0.0, qps=0.0)
    seen: list[bool] = []
    passing = asyncio.create_task(writer._pass(statuses, targets))
    # Scheduled after the pass began: it runs at the pass's first yield, or
    # only after the whole pass when the pass never gives the loop back.
    probe = asyncio.get_running_loop().call_soon(lambda: seen.append(passing.done()))
    assert await passing is None
    assert seen == [False], "a policy change would have waited for the whole pass"
    probe.cancel()


async def test_one_pass_writes_every_changed_object_at_the_nodes_rate() -> None:
    statuses, targets = _world(30, written=False)
    patches = Patches()
    writer = StatusWriter(NODE, patches, interval=1.0, qps=200.0)
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await writer._pass(statuses, targets) is None
    took = loop.time() - began
    assert sorted(name for name, _ in patches.calls) == sorted(f"p{i}" for i in range(30))
    assert all(entry["enforcing"] is True for _, entry in patches.calls)
    assert writer.writes == 30
    assert took >= 29 / 200.0 * 0.9, f"30 writes at 200 per second took only {took:.3f} s"


async def test_a_wake_during_a_pass_ends_it_so_the_next_starts_from_newer_state() -> None:
    statuses, targets = _world(10, written=False)
    loop = asyncio.get_running_loop()

    class WakeOnSecond(Patches):
        def __call__(self, *a: Any) -> None:
            super().__call__(*a)
            if len(self.calls) == 2:  # a regeneration ends while the second write is under way
                loop.call_soon_threadsafe(writer.wake)

    patches = WakeOnSecond()
    writer = StatusWriter(NODE, patches, interval=1.0, qps=20.0)
    assert await writer._pass(statuses, targets) is None
    assert len(patches.calls) == 2, patches.calls
    assert writer._wake.is_set(), "the wake is left for the run loop, which starts the next pass"


async def test_our_own_write_coming_back_is_not_a_reason_to_look_again() -> None:
    statuses, targets = _world(1, written=False)
    writer = StatusWriter(NODE, Patches(), interval=0.0, qps=0.0)
    await writer._pass(statuses, targets)
    source = targets[0][1]
    ours = _obj("p0", {**WRITTEN, "lastUpdated": "2026-12-08T00:00:00Z"})
    assert writer.undone(source, ours) is False


async def test_an_entry_replaced_by_another_writer_is_written_again() -> None:
    statuses, targets = _world(1, written=False)
    patches = Patches()
    writer = StatusWriter(NODE, patches, interval=0.0, qps=0.0)
    await writer._pass(statuses, targets)
    kind, source, _ = targets[0]
    replaced = _obj("p0", {"ok": False, "enforcing": False, "error": "not ours"})
    assert writer.undone(source, replaced) is True
    await writer._pass(statuses, [(kind, source, replaced)])
    assert len(patches.calls) == 2 and patches.calls[-1][1]["ok"] is True
    assert writer.undone(source, _obj("p0", dict(WRITTEN))) is False, "the rewrite coming back"


async def test_wakes_during_the_settle_pause_are_answered_by_one_pass() -> None:
    statuses, targets = _world(3, written=True)
    looks: list[float] = []

    def current() -> dict[str, PolicyStatus]:
        looks.append(asyncio.get_running_loop().time())
        return statuses

    writer = StatusWriter(NODE, Patches(), interval=0.0, qps=0.0, settle=0.1)
    running = asyncio.create_task(writer.run(current, lambda: targets, lambda: True))
    try:
        writer.wake()
        await asyncio.sleep(0.02)
        writer.wake()  # a regeneration's wake right after the watch event's
        while not looks:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # a second pass would follow the first by the settle pause
        assert len(looks) == 1, f"{len(looks)} passes for one burst"
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
