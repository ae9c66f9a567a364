"""Raw HTTP/1.1 and HTTP/2 (h2c prior knowledge) requests for the Envoy
tests: the target and the header lines go out exactly as given (repeated
names, odd paths), which httpx would normalize or refuse. One connection per
request; `preamble` is written first (a PROXY protocol line)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import h2.connection
import h2.events

Headers = Sequence[tuple[str, str]]
Send = Callable[..., Awaitable[tuple[int, str]]]
# Envoy answers well within this; a request that waits longer is a test failure.
READ_TIMEOUT_S = 5.0


async def http1(port: int, target: str, headers: Headers = (), preamble: bytes = b"") -> tuple[int, str]:
    """(status, body). Reads exactly the response (by Content-Length): after a
    400 Envoy keeps the connection open for its delayed close, so reading to
    EOF would wait for that."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers).encode("utf-8", "surrogateescape")
        w.write(preamble + b"GET " + target.encode() + b" HTTP/1.1\r\nHost: x\r\n" + head + b"Connection: close\r\n\r\n")
        await w.drain()
        raw = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
        status_line, *lines = raw.decode("latin-1").split("\r\n")
        length = next((int(v) for k, _, v in (x.partition(":") for x in lines) if k.lower() == "content-length"), 0)
        body = await asyncio.wait_for(r.readexactly(length), READ_TIMEOUT_S)
        return int(status_line.split()[1]), body.decode(errors="replace")
    finally:
        w.close()


async def http2(port: int, target: str, headers: Headers = (), preamble: bytes = b"") -> tuple[int, str]:
    """(status, body); a stream or connection Envoy resets counts as 400."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    conn = h2.connection.H2Connection()
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    request = [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", target), *headers]
    conn.send_headers(sid, request, end_stream=True)
    w.write(preamble + conn.data_to_send())
    status, body = 0, b""
    try:
        while True:
            data = await asyncio.wait_for(r.read(65536), READ_TIMEOUT_S)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    conn.acknowledge_received_data(len(ev.data), ev.stream_id)
                elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    return status or 400, body.decode(errors="replace")
            w.write(conn.data_to_send())
    finally:
        w.close()
    return status or 400, body.decode(errors="replace")


PROTOCOLS = {"http1": http1, "http2": http2}
