"""The recent flow events the agent keeps for `policy diff --observed`.

A bounded ring: at most `capacity` events and none older than `max_age`
seconds (by the event's own time), so memory stays fixed however busy the
node is and a replay covers "the last hour" at most. Each event is kept as
its JSON (fields left at their default omitted): ~650 bytes instead of the
~3.5 KiB of a model instance, 6 MiB rather than 34 for a full ring; it is
read back (~3 us an event) only when someone asks for the history. Pure,
no I/O.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticSerializationError

from agent.core.models import FlowEvent

HISTORY_CAPACITY = 10_000
HISTORY_MAX_AGE = 3600.0


class FlowHistory:
    def __init__(
        self,
        capacity: int = HISTORY_CAPACITY,
        max_age: float = HISTORY_MAX_AGE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if capacity < 1 or max_age <= 0:
            raise ValueError("flow history needs a positive capacity and max_age")
        self.capacity = capacity
        self.max_age = max_age
        self._clock = clock
        # (event time, the event's JSON), oldest first
        self._events: deque[tuple[float, bytes]] = deque(maxlen=capacity)
        self.evicted = 0  # pushed out by capacity or age, for the reader to know what it misses

    def add(self, event: FlowEvent) -> None:
        if len(self._events) == self.capacity:
            self.evicted += 1
        try:
            raw = event.model_dump_json(exclude_defaults=True).encode()
        except PydanticSerializationError:
            # A string no UTF-8 encoder takes (a lone surrogate, e.g. from a
            # path a tenant sent): stdlib JSON escapes it and gives it back.
            raw = _ESCAPED + json.dumps(event.model_dump(exclude_defaults=True)).encode()
        self._events.append((event.time, raw))

    def _expire(self) -> None:
        horizon = self._clock() - self.max_age
        while self._events and self._events[0][0] < horizon:
            self._events.popleft()
            self.evicted += 1

    def events(self, since: float | None = None) -> list[FlowEvent]:
        """Events kept, oldest first; with `since`, only those of the last `since` seconds."""
        self._expire()
        horizon = None if since is None else self._clock() - since
        return [_read(raw) for t, raw in self._events if horizon is None or t >= horizon]

    def listing(self, since: float | None = None) -> FlowHistoryList:
        return FlowHistoryList(events=self.events(since), capacity=self.capacity, max_age=self.max_age, evicted=self.evicted)

    def __len__(self) -> int:
        self._expire()
        return len(self._events)


_ESCAPED = b"~"  # before JSON written by the stdlib encoder (pydantic's JSON reader rejects lone surrogates)


def _read(raw: bytes) -> FlowEvent:
    if raw.startswith(_ESCAPED):
        return FlowEvent.model_validate(json.loads(raw[len(_ESCAPED):]))
    return FlowEvent.model_validate_json(raw)


class FlowHistoryList(BaseModel):
    """GET /v1/flows/history: the events the agent still holds, oldest first."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    events: list[FlowEvent]
    capacity: int = Field(description="most events kept")
    max_age: float = Field(description="seconds an event is kept at most")
    evicted: int = Field(description="events pushed out since the agent started (capacity or age)")
