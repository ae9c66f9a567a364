"""Datapath port bound to `redirect.datapath.Datapath` — UNFINISHED.

`redirect/datapath.py` is not in the tree yet, so `ciliate agent` refuses to
start with a clear message rather than run without a kernel datapath (the
product fails closed; it never pretends to enforce). The binding below is
written against the announced interface: attach_endpoint(endpoint_id, ifname,
ipv4, identity), detach_endpoint(id), apply(state) -> result with per-endpoint
MapFullError, dump_policy(id), events(), setup_proxy_plumbing(); it must be
checked against the real module when it lands.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator, Mapping
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from agent.ports import ApplyOutcome, DumpedEntry, Failure
from policy.compiled import CompiledState


class DatapathUnavailable(RuntimeError):
    pass


def _module() -> Any:
    try:
        return importlib.import_module("redirect.datapath")
    except ImportError as exc:
        raise DatapathUnavailable(
            f"the kernel datapath (redirect.datapath) is not available: {exc}; "
            "the agent will not run without one, since nothing would be enforced"
        ) from exc


class KernelDatapath:
    def __init__(self, pin_dir: Path, state_dir: Path) -> None:
        mod = _module()
        self._errors = importlib.import_module("redirect.errors")
        self._dp = mod.Datapath(pin_dir, state_dir)

    async def setup(self) -> None:
        await asyncio.to_thread(self._dp.setup_proxy_plumbing)

    async def attach_endpoint(self, endpoint_id: int, ifname: str, ipv4: IPv4Address | None, identity: int) -> None:
        await asyncio.to_thread(self._dp.attach_endpoint, endpoint_id, ifname, ipv4, identity)

    async def detach_endpoint(self, endpoint_id: int) -> None:
        await asyncio.to_thread(self._dp.detach_endpoint, endpoint_id)

    async def apply(self, state: CompiledState, changed: frozenset[int]) -> ApplyOutcome:
        result = await asyncio.to_thread(self._dp.apply, state)
        failed: dict[int, Failure] = {}
        map_full = getattr(self._errors, "MapFullError", ())
        for eid, err in dict(getattr(result, "errors", {}) or {}).items():
            kind = "map-full" if isinstance(err, map_full) else "datapath"
            failed[eid] = Failure(kind, str(err), transient=kind != "map-full")
        return ApplyOutcome(failed)

    async def dump_policy(self, endpoint_id: int) -> list[DumpedEntry]:
        rows = await asyncio.to_thread(self._dp.dump_policy, endpoint_id)
        out = []
        for key, value in rows:  # UNFINISHED: shape to confirm against redirect/
            verdict, proxy_port = value
            out.append(DumpedEntry(key.identity, key.direction.name.lower(), key.protocol.name, str(key.ports), verdict.name.lower(), proxy_port))
        return out

    async def flow_events(self) -> AsyncIterator[Mapping[str, Any]]:
        async for ev in self._dp.events():  # UNFINISHED: FlowEvent field names to confirm
            yield dict(vars(ev)) if not isinstance(ev, Mapping) else ev
