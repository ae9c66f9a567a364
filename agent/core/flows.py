"""Fan-out of flow events (kernel verdicts, Envoy access logs) to monitor clients.

Each subscriber gets its own bounded queue; a slow client loses its oldest
events (counted) rather than slowing the agent. A subscriber's filter
(flow_filter.py) is applied before its queue, so what it drops for being
slow is only ever what it asked for. Pure asyncio, no I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

from agent.core.flow_filter import FlowFilter
from agent.core.flow_history import FlowHistory
from agent.core.models import FlowEvent

SUBSCRIBER_QUEUE = 1024


class Subscription:
    def __init__(self, hub: "FlowHub", flt: FlowFilter) -> None:
        self._hub = hub
        self.filter = flt
        self.queue: asyncio.Queue[FlowEvent | None] = asyncio.Queue(SUBSCRIBER_QUEUE + 1)
        self.lost = 0

    def offer(self, event: FlowEvent) -> None:
        if self.filter and not self.filter.matches(event):
            return
        if self.queue.qsize() >= SUBSCRIBER_QUEUE:
            self.queue.get_nowait()
            self.lost += 1
        self.queue.put_nowait(event)

    def close(self) -> None:
        self._hub._subs.discard(self)

    def end(self) -> None:
        """Make the iteration stop (agent shutdown); the slot above capacity is for this."""
        self.queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[FlowEvent]:
        while (event := await self.queue.get()) is not None:
            yield event


class FlowHub:
    def __init__(self) -> None:
        self._subs: set[Subscription] = set()
        self.published = 0
        self.history = FlowHistory()  # for `policy diff --observed` (GET /v1/flows/history)

    def subscribe(self, types: frozenset[str] | None = None, flt: FlowFilter | None = None) -> Subscription:
        """Events of these `types` (all when None) that pass `flt`."""
        if types:
            flt = replace(flt or FlowFilter(), types=frozenset(types))
        sub = Subscription(self, flt or FlowFilter())
        self._subs.add(sub)
        return sub

    def publish(self, event: FlowEvent) -> None:
        self.published += 1
        self.history.add(event)
        for sub in list(self._subs):
            sub.offer(event)

    def close(self) -> None:
        """End every subscriber's stream."""
        for sub in list(self._subs):
            sub.end()
        self._subs.clear()

    @property
    def subscribers(self) -> int:
        return len(self._subs)
