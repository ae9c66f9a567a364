#!/usr/bin/env python3
"""DNS load from inside a pod (bench_dns.py runs it with `ip netns exec`).

`rate`: queries at a fixed rate (one UDP socket per query, as a stub
resolver does), names taken round-robin; prints one JSON line with the
latencies (ms) of the answers, timeouts and rcodes.

`fresh`: each name once, one after another; after each answer, a TCP connect
to its first address on --connect-port: the time from the answer to the
connection being accepted, and how many connects failed (the kernel did not
admit the address in time)."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time

import dns.message
import dns.rcode


class _One(asyncio.DatagramProtocol):
    def __init__(self, fut: asyncio.Future) -> None:
        self.fut = fut

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        if not self.fut.done():
            self.fut.set_result(data)


async def _ask(server: str, name: str, timeout: float) -> tuple[float, bytes | None]:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future = loop.create_future()
    wire = dns.message.make_query(name, "A").to_wire()
    t0 = time.perf_counter()
    transport, _ = await loop.create_datagram_endpoint(lambda: _One(fut), remote_addr=(server, 53))
    try:
        transport.sendto(wire)
        data = await asyncio.wait_for(fut, timeout)
        return time.perf_counter() - t0, data
    except asyncio.TimeoutError:
        return time.perf_counter() - t0, None
    finally:
        transport.close()


async def rate(server: str, names: list[str], qps: float, seconds: float, timeout: float) -> dict:
    lat: list[float] = []
    rcodes: dict[str, int] = {}
    timeouts = 0
    tasks: list[asyncio.Task] = []
    n = int(qps * seconds)
    start = time.perf_counter()
    for i in range(n):
        delay = start + i / qps - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_ask(server, names[i % len(names)], timeout)))
    for t in tasks:
        took, data = await t
        if data is None:
            timeouts += 1
            continue
        lat.append(took * 1000)
        rc = dns.rcode.to_text(dns.message.from_wire(data).rcode())
        rcodes[rc] = rcodes.get(rc, 0) + 1
    return {"sent": n, "answered": len(lat), "timeouts": timeouts, "rcodes": rcodes, "ms": lat,
            "achieved_qps": n / (time.perf_counter() - start)}


async def fresh(server: str, names: list[str], port: int, timeout: float) -> dict:
    query_ms: list[float] = []
    connect_ms: list[float] = []
    failed = 0
    failures: list[tuple[str, float, str]] = []  # name, query ms, why
    loop = asyncio.get_running_loop()
    for name in names:
        took, data = await _ask(server, name, timeout)
        if data is None:
            failed += 1
            continue
        query_ms.append(took * 1000)
        msg = dns.message.from_wire(data)
        addrs = [r.address for rrset in msg.answer for r in rrset if hasattr(r, "address")]
        if not addrs:
            failed += 1
            continue
        t0 = time.perf_counter()
        s = socket.socket()
        s.setblocking(False)
        try:
            # No retransmission within the bound: a dropped SYN is a failure.
            await asyncio.wait_for(loop.sock_connect(s, (addrs[0], port)), 0.9)
            connect_ms.append((time.perf_counter() - t0) * 1000)
        except (OSError, asyncio.TimeoutError) as e:
            failed += 1
            failures.append((name, round(took * 1000, 2), type(e).__name__))
        finally:
            s.close()
    return {"names": len(names), "query_ms": query_ms, "connect_ms": connect_ms, "failed": failed,
            "failures": failures[:20]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("rate", "fresh"))
    ap.add_argument("server")
    ap.add_argument("--names", required=True, help="comma-separated")
    ap.add_argument("--qps", type=float, default=1000)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--timeout", type=float, default=2.0)
    ap.add_argument("--connect-port", type=int, default=80)
    a = ap.parse_args()
    names = a.names.split(",")
    if a.mode == "rate":
        out = asyncio.run(rate(a.server, names, a.qps, a.seconds, a.timeout))
    else:
        out = asyncio.run(fresh(a.server, names, a.connect_port, a.timeout))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
