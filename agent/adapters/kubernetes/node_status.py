"""What a CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy says about this
node, and the writer that keeps it true without flooding the API server.

`status.nodes[<node>]` reads as Cilium's: `ok` (the policy was accepted),
`enforcing` (it is in force on this node at `localPolicyRevision`), `error`
(validation, Envoy's NACK text, a full policy map...), `lastUpdated`, and
the object's `annotations` when it has any; plus `observedGeneration`, the
object generation this entry is about (Kubernetes' convention; Cilium's
entry has no such field). Written with a JSON merge patch on the status
subresource, so each node touches only its own key.

Writes are few on purpose (a thousand nodes write to the same objects):
- an entry is written only when what it says changes: ok, enforcing, error,
  annotations or the generation; a policy revision that moved because some
  other policy changed is no reason to write;
- `pending` (the change is on its way into the kernel and Envoy) is never
  written: the entry goes straight from the old settled state to the new;
- at most one write per object per `interval` seconds, the last state wins
  (coalesced); and at most `qps` writes per second from this node;
- the entry already on the object (a restarted agent) counts as written;
- a pass over the objects gives the event loop back every YIELD_EVERY
  objects and while it waits out the qps spacing, and ends as soon as a
  newer state wakes it: with a thousand policies one pass held the loop for
  15-30 ms, and a policy change arriving then waited (the API path's kernel
  p99 in bench_k8s);
- our own write coming back as a watch event is no reason to look again:
  only an entry on the object that differs from what was written (another
  writer undid it), or new annotations or generation, wake the writer.
NetworkPolicy has no status subresource in Kubernetes (its alpha status was
removed); as Cilium, the agent writes nothing there: `ciliate policy get`
and the agent's log show its errors.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from agent.core.models import PolicyStatus
from agent.core.shutdown import wait_event

log = logging.getLogger(__name__)

COMPARED = ("ok", "enforcing", "error", "annotations", "observedGeneration")
YIELD_EVERY = 64  # objects looked at between two yields to the event loop


def desired_entry(status: PolicyStatus | None, obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """This node's entry for `obj`, lastUpdated aside; None: nothing settled to say."""
    if status is None or status.state == "pending":
        return None
    messages = [e.message for e in status.errors] + ([status.reason] if status.reason else [])
    meta = obj.get("metadata") or {}
    return {
        "ok": status.state != "error",
        "enforcing": status.state == "enforced",
        "localPolicyRevision": status.revision,
        "error": "; ".join(messages) if messages else None,  # None: a merge patch removes an old error
        "annotations": dict(meta.get("annotations") or {}) or None,
        "observedGeneration": meta.get("generation"),
    }


def _compared(entry: Mapping[str, Any] | None) -> tuple | None:
    if entry is None:
        return None
    return tuple(entry.get(k) or None for k in COMPARED)


def current_entry(obj: Mapping[str, Any], node: str) -> Mapping[str, Any] | None:
    return (((obj.get("status") or {}).get("nodes")) or {}).get(node)


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


Target = tuple[str, str, Mapping[str, Any]]  # (kind, source name, object)
Patch = Callable[[str, str | None, str, dict[str, Any]], None]  # blocking


class StatusWriter:
    def __init__(self, node: str, patch: Patch, *, interval: float = 1.0, qps: float = 10.0, settle: float = 0.2) -> None:
        self.node = node
        self._patch = patch
        self.interval = interval
        self.spacing = 1.0 / qps if qps > 0 else 0.0
        self.settle = settle
        self.writes = 0
        self.errors = 0
        self._written: dict[str, tuple | None] = {}
        self._last_write: dict[str, float] = {}
        self._last_any = 0.0
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    def forget(self, source: str) -> None:
        self._written.pop(source, None)
        self._last_write.pop(source, None)

    def undone(self, source: str, obj: Mapping[str, Any]) -> bool:
        """The object came back from the API server: True when this node's
        entry on it is not what was written here (another writer replaced
        it), and then it is compared afresh at the next pass."""
        if source not in self._written or self._written[source] == _compared(current_entry(obj, self.node)):
            return False
        self._written.pop(source, None)
        return True

    async def run(
        self,
        statuses: Callable[[], Mapping[str, PolicyStatus]],
        targets: Callable[[], Iterable[Target]],
        reachable: Callable[[], bool],
    ) -> None:
        retry: float | None = None
        while True:
            # Not asyncio.wait_for: on 3.11 it swallows a cancel that arrives in
            # the same tick as a wake (agent/core/shutdown.py), and wakes come
            # at any time; KubernetesSource.stop() then waited on us forever.
            await wait_event(self._wake, retry)
            await asyncio.sleep(self.settle)  # a burst of changes becomes one pass:
            self._wake.clear()  # wakes during the settle are answered by this pass
            retry = None
            if not reachable():
                retry = max(self.interval, 1.0)  # nothing to gain from trying; look again later
                continue
            try:
                retry = await self._pass(statuses(), list(targets()))
            except Exception:  # noqa: BLE001 - the writer must outlive any one bad pass
                log.exception("writing policy status failed; retrying")
                retry = max(self.interval, 1.0)

    async def _pass(self, statuses: Mapping[str, PolicyStatus], targets: list[Target]) -> float | None:
        """One look at every object; returns when to look again (None: only on wake)."""
        later: float | None = None
        for i, (kind, source, obj) in enumerate(targets):
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
            if self._wake.is_set():
                return None  # newer statuses: the next pass starts from them
            want = desired_entry(statuses.get(source), obj)
            if want is None:
                continue
            have = self._written.get(source, _compared(current_entry(obj, self.node)))
            if _compared(want) == have:
                continue
            now = time.monotonic()
            wait = self.interval - (now - self._last_write.get(source, -1e9))
            if wait > 0:
                later = wait if later is None else min(later, wait)
                continue
            spacing = self.spacing - (now - self._last_any)
            if spacing > 0:
                await asyncio.sleep(spacing)  # the node's qps; the rest of the pass follows
                if self._wake.is_set():
                    return None
            meta = obj.get("metadata") or {}
            body = {"status": {"nodes": {self.node: {**want, "lastUpdated": rfc3339(time.time())}}}}
            self._last_write[source] = self._last_any = time.monotonic()
            try:
                await asyncio.to_thread(self._patch, kind, meta.get("namespace"), str(meta.get("name")), body)
            except Exception as exc:  # noqa: BLE001
                status = getattr(exc, "status", None)
                if status == 404:  # deleted meanwhile: its DELETED event is on the way
                    continue
                self.errors += 1
                log.warning("status of %s not written: %s", source, exc)
                later = self.interval if later is None else min(later, self.interval)
                continue
            self.writes += 1
            self._written[source] = _compared(want)
        return later
