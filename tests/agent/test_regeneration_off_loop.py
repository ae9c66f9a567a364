"""A long regeneration does not freeze the agent: with the real policy loader
and compiler, a policy of 20,000 toCIDR /32s is added and removed while a
heartbeat on the event loop and a client asking GET /v1/healthz over the API
socket keep getting answers.

The bound is relative, so it holds on a loaded machine as on an idle one:
no stall of the loop, and no single /healthz answer, may take half as long
as the regeneration it overlapped. Compiling on the event loop stalls it
for the whole regeneration (a ratio near 1); off the loop the worst stall is
a garbage collection, which stops every thread wherever the compile runs:
the longest collection seen in the window (gc.callbacks) is taken off the
stall before it is compared (the figures are bench/bench_cidr.py's, a speed
target has no place here).
"""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path

from agent.adapters.policy_compiler import PolicyFileLoader, make_compiler_factory
from agent.api.client import AgentClient
from agent.daemon import Agent, AgentConfig, build_agent
from agent.core.models import EndpointCreate, EndpointState
from tests.agent.fakes import FakeDatapath, FakeProxy

N_CIDRS = 20_000
MAX_STALL_SHARE = 0.5  # of the regeneration's duration


def cidr(i: int) -> str:
    return f"{10 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.1/32"


def many_cidrs_policy(n: int) -> str:
    return json.dumps({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "many-cidrs", "namespace": "default"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "a"}}, "egress": [{"toCIDR": [cidr(i) for i in range(n)]}]},
    })


class Heartbeat:
    """Sleeps 10 ms at a time on the event loop and records how late it wakes."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.beats = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, loop.time() - t0 - 0.01)
            self.beats += 1


class HealthProbe(threading.Thread):
    """Asks GET /v1/healthz in a loop from another thread, as `ciliate status` would."""

    def __init__(self, socket: Path, busy: Callable[[], bool]) -> None:
        super().__init__(daemon=True)
        self.socket, self.busy = socket, busy
        self.worst = 0.0
        self.answered_while_busy = 0
        self.failures: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        with AgentClient(self.socket, timeout=60) as client:
            while not self.done.is_set():
                busy = self.busy()
                t0 = time.perf_counter()
                try:
                    health = client.health()
                except Exception as exc:  # reported, not raised, so the test names it
                    self.failures.append(repr(exc))
                    return
                self.worst = max(self.worst, time.perf_counter() - t0)
                if not health.ok:
                    self.failures.append(f"unhealthy: {health.checks}")
                self.answered_while_busy += busy and self.busy()
                self.done.wait(0.02)


class GcPauses:
    """The longest garbage collection while installed (any thread, any
    generation): a pause of the whole interpreter, not of the event loop."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._started: float | None = None

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.worst = max(self.worst, time.perf_counter() - self._started)
            self._started = None

    def __enter__(self) -> "GcPauses":
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


async def regenerate_under_watch(
    agent: Agent, socket: Path, change: Callable[[], object],
) -> tuple[Heartbeat, HealthProbe, float]:
    """The heartbeat and probe records (less the longest GC pause in the
    window), and how long the regeneration took."""
    loop = asyncio.get_running_loop()
    beat = Heartbeat()
    beat_task = asyncio.create_task(beat.run())
    probe = HealthProbe(socket, lambda: agent.queue.pending)
    probe.start()
    with GcPauses() as pauses:
        try:
            await asyncio.sleep(0.05)
            t0 = loop.time()
            change()
            assert agent.watcher is not None
            await agent.watcher.poll_once()
            await agent.queue.drain(120)
            took = loop.time() - t0
        finally:
            beat_task.cancel()
            await asyncio.gather(beat_task, return_exceptions=True)
            probe.done.set()
            await asyncio.to_thread(probe.join)
    beat.worst = max(0.0, beat.worst - pauses.worst)
    probe.worst = max(0.0, probe.worst - pauses.worst)
    return beat, probe, took


def assert_responsive(beat: Heartbeat, probe: HealthProbe, took: float, what: str) -> None:
    assert not probe.failures, probe.failures
    assert beat.worst < MAX_STALL_SHARE * took, f"event loop stalled {beat.worst:.2f}s of the {took:.2f}s spent {what}"
    assert probe.worst < MAX_STALL_SHARE * took, f"/v1/healthz took {probe.worst:.2f}s of the {took:.2f}s spent {what}"


async def test_api_answers_while_twenty_thousand_cidrs_are_added_and_removed(tmp_path: Path, short_dir: Path) -> None:
    short = short_dir
    socket = short / "agent.sock"
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    datapath = FakeDatapath()
    agent = build_agent(
        AgentConfig(state_dir=tmp_path / "state", policy_dir=policy_dir, socket_path=socket, metrics_port=None, poll_interval=3600.0, settle=0.0),
        compiler_factory=make_compiler_factory(),
        loader=PolicyFileLoader(),
        datapath=datapath,
        proxy=FakeProxy(),
    )
    await agent.start()
    try:
        view, _ = await agent.create_endpoint(
            EndpointCreate(container_id="c1", host_ifname="lxcmany", ipv4=IPv4Address("10.200.0.1"), labels={"app": "a"}, name="a"),
            wait=30,
        )
        path = policy_dir / "many.json"
        text = many_cidrs_policy(N_CIDRS)

        beat, probe, took = await regenerate_under_watch(agent, socket, lambda: path.write_text(text))
        # The regeneration really happened while we watched: the subject enforces every prefix.
        assert len(datapath.kernel[view.id]) >= N_CIDRS
        after = agent.table.view(view.id)
        assert after is not None and after.state == EndpointState.READY and after.egress_enforced
        assert probe.answered_while_busy >= 1
        assert_responsive(beat, probe, took, f"adding {N_CIDRS} CIDRs")

        beat, probe, took = await regenerate_under_watch(agent, socket, path.unlink)
        after = agent.table.view(view.id)
        assert after is not None and not after.egress_enforced
        assert_responsive(beat, probe, took, f"removing {N_CIDRS} CIDRs")
    finally:
        await agent.stop()
