"""The DNS proxy's UDP forwarding: a query in, a verdict, the resolver's
answer out (asyncio). Where the query was going and whether it may go there
are the caller's (`Policy`); this module moves and checks the messages.

For each query (UDP datagram, or message on a TCP connection):
- a query that does not parse is answered FORMERR (when its id is
  readable) and goes nowhere;
- a denied query is answered by the proxy itself (REFUSED or NXDOMAIN);
- an allowed one goes to its resolver from a socket of its own, connected
  to that resolver (the kernel drops datagrams from anyone else); the
  answer must match the query (dnsproxy/messages.py), else the client gets
  SERVFAIL and nothing is learned;
- the answer's addresses go to `Policy.learned`, and the answer is released
  to the client only once that returns (the datapath admits the addresses
  first, so the first connection is not dropped), or after
  `release_delay` seconds, whichever is first;
- at most `max_pending` queries are in flight: past it, new ones are
  answered REFUSED, so a flood cannot open unbounded sockets.
Every query ends in one DNSEvent (monitor, metrics).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import dns.message
import dns.rcode

from .messages import Answer, MessageError, Query, Reject, header_only, parse_query, parse_response, query_id, refusal

log = logging.getLogger(__name__)

Addr = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    rule: str = ""  # which rule allowed or denied it, for the monitor


@dataclass(frozen=True, slots=True)
class DNSEvent:
    client: Addr
    server: Addr
    name: str
    qtype: str
    verdict: str  # "allowed", "denied", "malformed", "overload"
    rcode: str = ""  # the answer the client got
    addresses: tuple[str, ...] = ()
    rule: str = ""
    error: str = ""
    latency_s: float = 0.0
    transport: str = "UDP"  # or "TCP"


class Policy(Protocol):
    def upstream(self, client: Addr, local: Addr) -> Addr: ...
    def decide(self, client: Addr, server: Addr, query: Query) -> Verdict: ...
    def learned(self, client: Addr, query: Query, answer: Answer) -> Awaitable[None]: ...


@dataclass
class ForwarderConfig:
    reject: Reject = Reject.REFUSED
    upstream_timeout: float = 5.0  # seconds for the resolver's answer
    release_delay: float = 0.1  # seconds an answer waits for its addresses to be admitted (Cilium: 100 ms)
    max_pending: int = 1024


def servfail(query: Query) -> bytes:
    resp = dns.message.make_response(query.message, recursion_available=True)
    resp.set_rcode(dns.rcode.SERVFAIL)
    return resp.to_wire()


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        if not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


async def ask_udp(server: Addr, data: bytes, timeout: float) -> bytes:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    transport, proto = await loop.create_datagram_endpoint(_Upstream, remote_addr=server, family=family)
    try:
        transport.sendto(data)
        return await asyncio.wait_for(proto.answer, timeout)
    finally:
        transport.close()


async def read_framed(reader: asyncio.StreamReader) -> bytes | None:
    """One DNS-over-TCP message (RFC 1035 4.2.2: a 2-octet length first);
    None at a clean end of stream."""
    try:
        head = await reader.readexactly(2)
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise
        return None
    return await reader.readexactly(int.from_bytes(head, "big"))


def framed(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


async def ask_tcp(server: Addr, data: bytes, timeout: float) -> bytes:
    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(*server)
        try:
            writer.write(framed(data))
            await writer.drain()
            got = await read_framed(reader)
            if got is None:
                raise ConnectionError("the resolver closed the connection without an answer")
            return got
        finally:
            writer.close()

    return await asyncio.wait_for(exchange(), timeout)


Ask = Callable[[Addr, bytes, float], Awaitable[bytes]]


@dataclass
class Pipeline:
    """What happens to one query, whatever carried it: returns the bytes the
    client gets (None: nothing to send)."""

    policy: Policy
    on_event: Callable[[DNSEvent], None] = lambda _e: None
    config: ForwarderConfig = field(default_factory=ForwarderConfig)

    def unparsed(self, data: bytes, client: Addr, local: Addr, verdict: str, rcode: int, error: str = "",
                 transport: str = "UDP") -> bytes | None:
        self.on_event(DNSEvent(client, local, "", "", verdict, dns.rcode.to_text(rcode), error=error, transport=transport))
        msg_id = query_id(data)
        return None if msg_id is None else header_only(msg_id, rcode)

    async def answer(self, data: bytes, client: Addr, local: Addr, ask: Ask, transport: str = "UDP") -> bytes | None:
        t0 = time.monotonic()
        try:
            query = parse_query(data)
        except MessageError as e:
            return self.unparsed(data, client, local, "malformed", dns.rcode.FORMERR, str(e), transport)
        server = self.policy.upstream(client, local)
        verdict = self.policy.decide(client, server, query)
        if not verdict.allowed:
            self.on_event(DNSEvent(client, server, query.name, query.qtype, "denied",
                                   dns.rcode.to_text(self.config.reject.rcode), rule=verdict.rule, latency_s=time.monotonic() - t0,
                                   transport=transport))
            return refusal(query, self.config.reject)
        try:
            wire = await ask(server, data, self.config.upstream_timeout)
            answer = parse_response(wire, query)
        except (OSError, EOFError, asyncio.TimeoutError, asyncio.IncompleteReadError, MessageError) as e:
            self.on_event(DNSEvent(client, server, query.name, query.qtype, "allowed", "SERVFAIL", rule=verdict.rule,
                                   error=str(e) or type(e).__name__, latency_s=time.monotonic() - t0, transport=transport))
            return servfail(query)
        if answer.addresses:
            try:
                await asyncio.wait_for(self.policy.learned(client, query, answer), self.config.release_delay)
            except asyncio.TimeoutError:
                log.debug("releasing the answer for %s before its addresses were admitted", query.name)
        self.on_event(DNSEvent(client, server, query.name, query.qtype, "allowed", answer.rcode,
                               tuple(str(a) for a, _ in answer.addresses), verdict.rule, latency_s=time.monotonic() - t0,
                               transport=transport))
        return wire


class UDPForwarder(asyncio.DatagramProtocol):
    def __init__(self, policy: Policy, on_event: Callable[[DNSEvent], None] = lambda _e: None,
                 config: ForwarderConfig | None = None) -> None:
        self.pipeline = Pipeline(policy, on_event, config or ForwarderConfig())
        self.transport: asyncio.DatagramTransport | None = None
        self.local: Addr = ("", 0)
        self._pending: set[asyncio.Task] = set()

    async def start(self, host: str, port: int) -> Addr:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        self.local = transport.get_extra_info("sockname")[:2]
        return self.local

    async def stop(self) -> None:
        if self.transport is not None:
            self.transport.close()
        for t in list(self._pending):
            t.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        client: Addr = addr[:2]
        if len(self._pending) >= self.pipeline.config.max_pending:
            self._send(self.pipeline.unparsed(data, client, self.local, "overload", dns.rcode.REFUSED), client)
            return
        task = asyncio.get_running_loop().create_task(self._handle(data, client))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _handle(self, data: bytes, client: Addr) -> None:
        self._send(await self.pipeline.answer(data, client, self.local, ask_udp), client)

    def _send(self, data: bytes | None, client: Addr) -> None:
        if data is not None and self.transport is not None:
            self.transport.sendto(data, client)


class TCPForwarder:
    """DNS over TCP (clients retry there when a UDP answer is truncated):
    each message on a connection goes through the same pipeline, answered
    in order; a connection idle for `idle_timeout` seconds, or one that
    sends a broken frame, is closed; at most `max_pending` connections."""

    def __init__(self, policy: Policy, on_event: Callable[[DNSEvent], None] = lambda _e: None,
                 config: ForwarderConfig | None = None, idle_timeout: float = 10.0) -> None:
        self.pipeline = Pipeline(policy, on_event, config or ForwarderConfig())
        self.idle_timeout = idle_timeout
        self.local: Addr = ("", 0)
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task] = set()

    async def start(self, host: str, port: int) -> Addr:
        self._server = await asyncio.start_server(self._serve, host, port)
        self.local = self._server.sockets[0].getsockname()[:2]
        return self.local

    async def start_on(self, sock: socket.socket) -> Addr:
        """Serve on a listening socket the caller made (e.g. transparent:
        each accepted connection then has the original destination as its
        own address, which is where its queries go)."""
        self._server = await asyncio.start_server(self._serve, sock=sock)
        self.local = sock.getsockname()[:2]
        return self.local

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        client: Addr = writer.get_extra_info("peername")[:2]
        local: Addr = writer.get_extra_info("sockname")[:2]
        if len(self._conns) >= self.pipeline.config.max_pending:
            writer.close()
            return
        if task is not None:
            self._conns.add(task)
        try:
            while True:
                data = await asyncio.wait_for(read_framed(reader), self.idle_timeout)
                if data is None:
                    return
                reply = await self.pipeline.answer(data, client, local, ask_tcp, "TCP")
                if reply is None:
                    return
                writer.write(framed(reply))
                await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            if task is not None:
                self._conns.discard(task)
            writer.close()
