"""Verdict events from the pinned ring buffer, as an async iterator.

Does I/O (opens the pin, maps the ring into memory and reads it as the
kernel's BPF ring buffer layout defines, waits on the map fd with the event
loop). Read here rather than through libbcc's helpers: loading libbcc maps
LLVM and clang into the agent, ~55 MiB of its resident memory for a reader
of a few dozen lines. The program emits one
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
import mmap
import os
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from policy.compiled import Direction
from redirect import bpfsys, layout
from redirect.layout import EventVerdict, Hook, Reason

# The ring's record header: a 32-bit length whose top bits say the producer
# is still writing (BUSY) or dropped the record (DISCARD), then 32 bits of
# page offset; records start 8-byte aligned (include/uapi/linux/bpf.h).
_BUSY = 1 << 31
_DISCARD = 1 << 30
_HDR = 8


class RingBuffer:
    """A consumer of one BPF_MAP_TYPE_RINGBUF: the consumer position page is
    mapped read-write, the producer position page and the data (mapped twice
    in a row by the kernel, so a record never wraps) read-only."""

    def __init__(self, fd: int) -> None:
        self.size = bpfsys.map_info(fd).max_entries
        page = mmap.PAGESIZE
        self._consumer = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        try:
            self._producer = mmap.mmap(fd, page + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        except BaseException:
            self._consumer.close()
            raise
        self._data = page

    def consume(self) -> list[bytes]:
        """Every record committed so far, in order; advances the consumer."""
        out: list[bytes] = []
        cons = _U64.unpack_from(self._consumer, 0)[0]
        prod = _U64.unpack_from(self._producer, 0)[0]
        mask = self.size - 1
        while cons < prod:
            at = self._data + (cons & mask)
            word = _U32.unpack_from(self._producer, at)[0]
            if word & _BUSY:
                break  # still being written: the next wake-up comes back for it
            length = word & ~(_BUSY | _DISCARD)
            if not word & _DISCARD:
                out.append(self._producer[at + _HDR : at + _HDR + length])
            cons += (length + _HDR + 7) & ~7
            _U64.pack_into(self._consumer, 0, cons)
            prod = _U64.unpack_from(self._producer, 0)[0]
        return out

    def close(self) -> None:
        self._producer.close()
        self._consumer.close()


_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


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
        try:
            self._ring = RingBuffer(self._fd)
        except BaseException:
            os.close(self._fd)
            raise
        self._pending: list[FlowEvent] = []
        self._ready: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def _consume(self) -> None:
        self._pending.extend(FlowEvent.decode(raw) for raw in self._ring.consume())

    def _on_readable(self) -> None:
        self._consume()
        if self._pending and self._ready is not None:
            self._ready.set()

    def drain(self) -> list[FlowEvent]:
        """Everything already in the ring, without waiting."""
        self._consume()
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
            self._consume()
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
        self._ring.close()
        os.close(self._fd)
