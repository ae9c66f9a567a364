"""The DNS proxy's UDP forwarding: a query in, a verdict, the resolver's
answer out (asyncio). Where the query was going and whether it may go there
are the caller's (`Policy`); this module moves and checks the messages.

For each datagram:
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

import dns.flags
import dns.message
import dns.rcode

from .messages import Answer, MessageError, Query, Reject, format_error, parse_query, parse_response, query_id, refusal

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


@dataclass
class UDPForwarder(asyncio.DatagramProtocol):
    policy: Policy
    on_event: Callable[[DNSEvent], None] = lambda _e: None
    config: ForwarderConfig = field(default_factory=ForwarderConfig)

    def __post_init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.local: Addr = ("", 0)
        self._pending: set[asyncio.Task] = set()

    async def start(self, host: str, port: int) -> Addr:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        self.transport = transport  # type: ignore[assignment]
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
        if len(self._pending) >= self.config.max_pending:
            self._answer_unparsed(data, client, "overload", dns.rcode.REFUSED)
            return
        task = asyncio.get_running_loop().create_task(self._handle(data, client))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _send(self, data: bytes, client: Addr) -> None:
        if self.transport is not None:
            self.transport.sendto(data, client)

    def _answer_unparsed(self, data: bytes, client: Addr, verdict: str, rcode: int, error: str = "") -> None:
        msg_id = query_id(data)
        if msg_id is not None:
            resp = dns.message.Message(id=msg_id)
            resp.flags = dns.flags.QR | dns.flags.RA
            resp.set_rcode(rcode)
            self._send(resp.to_wire() if rcode != dns.rcode.FORMERR else format_error(msg_id), client)
        self.on_event(DNSEvent(client, self.local, "", "", verdict, dns.rcode.to_text(rcode), error=error))

    async def _handle(self, data: bytes, client: Addr) -> None:
        t0 = time.monotonic()
        try:
            query = parse_query(data)
        except MessageError as e:
            self._answer_unparsed(data, client, "malformed", dns.rcode.FORMERR, str(e))
            return
        server = self.policy.upstream(client, self.local)
        verdict = self.policy.decide(client, server, query)
        if not verdict.allowed:
            self._send(refusal(query, self.config.reject), client)
            self.on_event(DNSEvent(client, server, query.name, query.qtype, "denied",
                                   dns.rcode.to_text(self.config.reject.rcode), rule=verdict.rule, latency_s=time.monotonic() - t0))
            return
        try:
            wire = await self._ask(server, data)
            answer = parse_response(wire, query)
        except (OSError, asyncio.TimeoutError, MessageError) as e:
            self._send(servfail(query), client)
            self.on_event(DNSEvent(client, server, query.name, query.qtype, "allowed", "SERVFAIL", rule=verdict.rule,
                                   error=str(e) or type(e).__name__, latency_s=time.monotonic() - t0))
            return
        if answer.addresses:
            try:
                await asyncio.wait_for(self.policy.learned(client, query, answer), self.config.release_delay)
            except asyncio.TimeoutError:
                log.debug("releasing the answer for %s before its addresses were admitted", query.name)
        self._send(wire, client)
        self.on_event(DNSEvent(client, server, query.name, query.qtype, "allowed", answer.rcode,
                               tuple(str(a) for a, _ in answer.addresses), verdict.rule, latency_s=time.monotonic() - t0))

    async def _ask(self, server: Addr, data: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        transport, proto = await loop.create_datagram_endpoint(_Upstream, remote_addr=server, family=family)
        try:
            transport.sendto(data)
            return await asyncio.wait_for(proto.answer, self.config.upstream_timeout)
        finally:
            transport.close()
