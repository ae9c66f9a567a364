"""Verdict events from the pinned ring buffer, as an async iterator.

Does I/O (opens the pin, reads the ring through libbcc's ring buffer
helpers, waits on the map fd with the event loop). The program emits one
event per new-flow decision and one per dropped packet, never for
established traffic. A ring buffer has one read position: run one reader
per install (the agent) and fan out from there.

    async with datapath.events() as stream:
        async for ev in stream:
            print(ev)
"""

from __future__ import annotations

import asyncio
import ctypes
import os
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from policy.compiled import Direction
from redirect import bpfsys, layout
from redirect.layout import EventVerdict, Hook, Reason

_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)


def _libbcc() -> ctypes.CDLL:
    lib = ctypes.CDLL("libbcc.so.0", use_errno=True)
    lib.bpf_new_ringbuf.restype = ctypes.c_void_p
    lib.bpf_new_ringbuf.argtypes = [ctypes.c_int, _CB, ctypes.c_void_p]
    lib.bpf_free_ringbuf.restype = None
    lib.bpf_free_ringbuf.argtypes = [ctypes.c_void_p]
    lib.bpf_consume_ringbuf.restype = ctypes.c_int
    lib.bpf_consume_ringbuf.argtypes = [ctypes.c_void_p]
    return lib


@dataclass(frozen=True, slots=True)
class FlowEvent:
    time_ns: int  # CLOCK_MONOTONIC (bpf_ktime_get_ns)
    verdict: EventVerdict
    reason: Reason | int
    endpoint_id: int  # endpoint whose veth saw the packet
    hook: Hook
    direction: Direction | None  # policy direction that decided
    src: IPv4Address | IPv6Address
    dst: IPv4Address | IPv6Address
    sport: int
    dport: int
    protocol: int
    src_identity: int
    dst_identity: int
    peer_endpoint_id: int
    proxy_port: int

    @classmethod
    def decode(cls, raw: bytes) -> "FlowEvent":
        e = layout.FlowEventRaw.from_buffer_copy(raw[: ctypes.sizeof(layout.FlowEventRaw)])
        try:
            reason: Reason | int = Reason(e.reason)
        except ValueError:
            reason = e.reason
        return cls(
            time_ns=e.ts_ns,
            verdict=EventVerdict(e.verdict),
            reason=reason,
            endpoint_id=e.endpoint_id,
            hook=Hook(e.hook),
            direction=None if e.direction == layout.DIR_NONE else Direction(e.direction),
            src=_addr(e.family, bytes(e.saddr)),
            dst=_addr(e.family, bytes(e.daddr)),
            sport=e.sport,
            dport=e.dport,
            protocol=e.protocol,
            src_identity=e.src_identity,
            dst_identity=e.dst_identity,
            peer_endpoint_id=e.peer_endpoint_id,
            proxy_port=e.proxy_port,
        )

    def __str__(self) -> str:
        r = self.reason.name if isinstance(self.reason, Reason) else str(self.reason)
        via = f" proxy:{self.proxy_port}" if self.verdict == EventVerdict.REDIRECT else ""
        return (
            f"{self.verdict.name:8} ep={self.endpoint_id} {_hostport(self.src, self.sport)} "
            f"(id {self.src_identity}) -> {_hostport(self.dst, self.dport)} (id {self.dst_identity}) "
            f"proto={self.protocol} {r}{via}"
        )


def _addr(family: int, raw: bytes) -> IPv4Address | IPv6Address:
    return IPv6Address(raw) if family == 6 else IPv4Address(raw[:4])


def _hostport(addr: IPv4Address | IPv6Address, port: int) -> str:
    # '[fd00::5]:80': without brackets the port reads as the last group
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


class EventStream:
    """Async iterator of FlowEvent from `<pin_dir>/ciliate_events`."""

    def __init__(self, pin_dir: Path) -> None:
        self._fd = bpfsys.obj_get(Path(pin_dir) / "ciliate_events")
        self._lib = _libbcc()
        self._pending: list[FlowEvent] = []
        self._cb = _CB(self._on_sample)  # kept alive as long as the ring
        self._rb = self._lib.bpf_new_ringbuf(self._fd, self._cb, None)
        if not self._rb:
            os.close(self._fd)
            raise OSError(ctypes.get_errno(), "bpf_new_ringbuf failed")
        self._ready: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def _on_sample(self, _ctx: int, data: int, size: int) -> int:
        self._pending.append(FlowEvent.decode(ctypes.string_at(data, size)))
        return 0

    def _on_readable(self) -> None:
        self._lib.bpf_consume_ringbuf(self._rb)
        if self._pending and self._ready is not None:
            self._ready.set()

    def drain(self) -> list[FlowEvent]:
        """Everything already in the ring, without waiting."""
        self._lib.bpf_consume_ringbuf(self._rb)
        out, self._pending = self._pending, []
        return out

    def __aiter__(self) -> "EventStream":
        return self

    async def __anext__(self) -> FlowEvent:
        if self._closed:
            raise StopAsyncIteration
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._ready = asyncio.Event()
            self._loop.add_reader(self._fd, self._on_readable)
            self._lib.bpf_consume_ringbuf(self._rb)
        assert self._ready is not None
        while not self._pending:
            self._ready.clear()
            await self._ready.wait()
            if self._closed:
                raise StopAsyncIteration
        return self._pending.pop(0)

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> "EventStream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
        if self._ready is not None:
            self._ready.set()
        self._lib.bpf_free_ringbuf(self._rb)
        os.close(self._fd)
