"""Forward one flow event source (the kernel's verdicts, Envoy's access log)
into the hub: each event completed with who is on each side (flow_enrich.py),
validated and counted. A malformed event is dropped, not fatal; a source
that ends or breaks is restarted with backoff. The Agent runs one pump per
source as a task; no I/O of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from pydantic import ValidationError

from agent.core.flow_enrich import FlowEnricher
from agent.core.flows import FlowHub
from agent.core.metrics import AgentMetrics
from agent.core.models import FlowEvent

log = logging.getLogger(__name__)

FlowSource = Callable[[], AsyncIterator[Mapping[str, Any]]]


async def pump_flows(source: FlowSource, name: str, enricher: FlowEnricher, hub: FlowHub, metrics: AgentMetrics) -> None:
    """Forward `source` into `hub` until cancelled, restarting it (with backoff) if it ends or breaks."""
    delay = 1.0
    while True:
        try:
            n = 0
            async for raw in source():
                delay = 1.0
                n += 1
                if n % 32 == 0:
                    # A queued burst never suspends the iterator: let the API in.
                    await asyncio.sleep(0)
                try:
                    event = FlowEvent.model_validate(enricher.enrich(raw))
                except ValidationError as exc:
                    log.debug("dropping malformed %s flow event: %s", name, exc)
                    continue
                metrics.flow_events.labels(event.type).inc()
                if event.type == "l7":
                    metrics.observe_l7(event.verdict)
                hub.publish(event)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s flow source failed; restarting it in %.0fs", name, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 60.0)
