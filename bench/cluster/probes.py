"""What node B's agent does, seen from inside its process: watch events and
listed keys by key kind (by wrapping kvstore.mirror.Mirror), the moment its
compiled ipcache holds given /32s (by wrapping Regenerator.on_report, called
right after `last_state` is set), and its regeneration counters."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from ipaddress import IPv4Network
from typing import Any

from agent.daemon import Agent
from agent.core.regenerator import RegenerationReport
from kvstore import layout
from kvstore.mirror import Change, Mirror

# Module-wide: only B's Cluster lives in the "cluster" child, so whatever the
# patched Mirror sees is B's.
EVENTS: Counter = Counter()
LISTED: Counter = Counter()
LIST_DONE: list[float] = []  # monotonic time of each relist (Mirror.reset)
_KINDS = (
    (layout.prefix(layout.IPS), "ip"),
    (layout.prefix(layout.REFS), "ref"),
    (layout.prefix(layout.IDS), "id"),
    (layout.prefix(layout.LABELS), "labels"),
    (layout.prefix(layout.NODES), "node"),
)


def _kind(key: bytes) -> str:
    return next((k for p, k in _KINDS if key.startswith(p)), "other")


def count_watch_events() -> None:
    """Count what the (one) Cluster in this process receives: listed keys and watch events."""
    apply, reset = Mirror.apply, Mirror.reset

    def counting_apply(self: Mirror, deleted: bool, key: bytes, *args: Any, **kwargs: Any) -> Change:
        EVENTS[_kind(key) + (" del" if deleted else "")] += 1
        return apply(self, deleted, key, *args, **kwargs)

    def counting_reset(self: Mirror, kvs: Iterable[tuple[bytes, bytes]], *args: Any, **kwargs: Any) -> Change:
        kvs = list(kvs)
        for key, *_ in kvs:
            LISTED[_kind(key)] += 1
        change = reset(self, kvs, *args, **kwargs)
        LIST_DONE.append(time.monotonic())
        return change

    Mirror.apply, Mirror.reset = counting_apply, counting_reset  # type: ignore[method-assign]


class IpcacheProbe:
    """Resolves waiters when the regenerator's last_state.ipcache holds all their /32s."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.reports = 0
        self._waiters: list[tuple[set[IPv4Network], asyncio.Future]] = []
        regen = agent.regenerator
        inner = regen.on_report

        def on_report(report: RegenerationReport) -> None:
            if inner is not None:
                inner(report)
            self.reports += 1
            self._check()

        regen.on_report = on_report

    def wait_for(self, nets: Iterable[IPv4Network]) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((set(nets), fut))
        self._check()
        return fut

    def _check(self) -> None:
        state = self.agent.regenerator.last_state
        if state is None or not self._waiters:
            return
        now, ipcache, keep = time.monotonic(), state.ipcache, []
        for nets, fut in self._waiters:
            nets.difference_update([n for n in nets if n in ipcache])
            if nets:
                keep.append((nets, fut))
            elif not fut.done():
                fut.set_result(now)
        self._waiters = keep


def regen_stats(agent: Agent) -> tuple[float, float]:
    """(count, sum of seconds) of the agent's regenerations so far, from its own metrics."""
    reg, name = agent.metrics.registry, "ciliate_endpoint_regeneration_time_stats_seconds"
    return (reg.get_sample_value(name + "_count", {"scope": "total"}) or 0.0, reg.get_sample_value(name + "_sum", {"scope": "total"}) or 0.0)
