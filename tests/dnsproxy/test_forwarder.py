"""The DNS proxy's UDP forwarding (dnsproxy/forwarder.py) between a client
and a real DNS server (dnsmasq on loopback)."""

from __future__ import annotations

import asyncio
import socket
from ipaddress import ip_address

import dns.message
import dns.rcode
import pytest

from dnsproxy.forwarder import DNSEvent, ForwarderConfig, TCPForwarder, UDPForwarder, Verdict
from dnsproxy.messages import Reject
from policy.dns_names import NameSelector, check_match_name

from .conftest import NAMES, TTL


class Rules:
    """Allows the names given, sends everything to `server`, records what it learned."""

    def __init__(self, server, allowed=("allowed.test",), admit_delay: float = 0.0, never_admit: bool = False) -> None:
        self.server = server
        self.selectors = [NameSelector(match_name=check_match_name(n)) for n in allowed]
        self.learned_at: list[tuple[float, str, tuple]] = []
        self.admit_delay = admit_delay
        self.never_admit = never_admit

    def upstream(self, client, local):
        return self.server

    def decide(self, client, server, query):
        ok = any(s.matches(query.name) for s in self.selectors)
        return Verdict(ok, "test-rule" if ok else "no rule")

    async def learned(self, client, query, answer):
        await asyncio.sleep(self.admit_delay)
        if self.never_admit:
            await asyncio.Event().wait()
        self.learned_at.append((asyncio.get_running_loop().time(), query.name, answer.addresses))


async def ask(proxy, name: str, qtype: str = "A", raw: bytes | None = None, timeout: float = 10.0):
    """A client on loopback: (reply message or None, time the reply came)."""
    loop = asyncio.get_running_loop()
    got: asyncio.Future = loop.create_future()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            if not got.done():
                got.set_result((data, loop.time()))

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=proxy)
    try:
        transport.sendto(raw if raw is not None else dns.message.make_query(name, qtype).to_wire())
        data, t = await asyncio.wait_for(got, timeout)
        return dns.message.from_wire(data), t
    finally:
        transport.close()


@pytest.fixture
async def started():
    """make(Forwarder class, rules, **config) -> (address, events); all stopped after the test."""
    servers = []

    async def make(cls, rules, **cfg):
        events: list[DNSEvent] = []
        fwd = cls(rules, events.append, ForwarderConfig(**cfg))
        addr = await fwd.start("127.0.0.1", 0)
        servers.append(fwd)
        return addr, events

    yield make
    for f in servers:
        await f.stop()


@pytest.fixture
def proxy_for(started):
    return lambda rules, **cfg: started(UDPForwarder, rules, **cfg)


@pytest.fixture
def tcp_proxy_for(started):
    return lambda rules, **cfg: started(TCPForwarder, rules, **cfg)


async def test_an_allowed_name_is_answered_by_the_resolver_after_its_addresses_are_admitted(dnsmasq, proxy_for):
    rules = Rules(dnsmasq.addr, admit_delay=0.05)
    addr, events = await proxy_for(rules)
    reply, t = await ask(addr, "Allowed.Test")
    assert reply.rcode() == dns.rcode.NOERROR
    assert [rr.address for rrset in reply.answer for rr in rrset] == [NAMES["allowed.test"]]
    ((admitted_at, name, addresses),) = rules.learned_at
    assert name == "allowed.test." and addresses == ((ip_address(NAMES["allowed.test"]), TTL),)
    assert admitted_at <= t, "the answer reached the client before its address was admitted"
    (ev,) = events
    assert (ev.verdict, ev.rcode, ev.addresses, ev.rule) == ("allowed", "NOERROR", (NAMES["allowed.test"],), "test-rule")


@pytest.mark.parametrize("reject, rcode", [(Reject.REFUSED, dns.rcode.REFUSED), (Reject.NAME_ERROR, dns.rcode.NXDOMAIN)])
async def test_a_denied_name_is_answered_by_the_proxy_and_never_reaches_a_resolver(proxy_for, reject, rcode):
    # The "resolver" is a socket of the test's own: it must hear nothing.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as resolver:
        resolver.bind(("127.0.0.1", 0))
        resolver.setblocking(False)
        addr, events = await proxy_for(Rules(resolver.getsockname()), reject=reject)
        reply, _ = await ask(addr, "other.test")
        assert reply.rcode() == rcode and not reply.answer
        assert [str(q.name) for q in reply.question] == ["other.test."]
        with pytest.raises(BlockingIOError):
            resolver.recv(512)
    (ev,) = events
    assert (ev.verdict, ev.name, ev.rule) == ("denied", "other.test.", "no rule")


async def test_garbage_gets_formerr_and_a_response_sent_as_a_query_goes_nowhere(dnsmasq, proxy_for):
    addr, events = await proxy_for(Rules(dnsmasq.addr))
    reply, _ = await ask(addr, "", raw=b"\x12\x34" + b"\xff" * 20)
    assert reply.id == 0x1234 and reply.rcode() == dns.rcode.FORMERR
    # A pod answering itself: a response (QR set) sent to the proxy.
    fake = dns.message.make_response(dns.message.make_query("allowed.test", "A"))
    reply, _ = await ask(addr, "", raw=fake.to_wire())
    assert reply.rcode() == dns.rcode.FORMERR
    assert [e.verdict for e in events] == ["malformed", "malformed"]


async def test_an_answer_is_released_after_the_delay_when_admission_hangs(dnsmasq, proxy_for):
    rules = Rules(dnsmasq.addr, never_admit=True)
    addr, events = await proxy_for(rules, release_delay=0.05)
    reply, _ = await ask(addr, "allowed.test")
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer
    assert events[0].verdict == "allowed"


async def test_a_silent_resolver_gives_servfail(proxy_for):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        addr, events = await proxy_for(Rules(silent.getsockname()), upstream_timeout=0.2)
        reply, _ = await ask(addr, "allowed.test")
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert events[0].rcode == "SERVFAIL" and events[0].error


async def test_past_the_in_flight_limit_queries_are_refused(dnsmasq, proxy_for):
    addr, events = await proxy_for(Rules(dnsmasq.addr), max_pending=0)
    reply, _ = await ask(addr, "allowed.test")
    assert reply.rcode() == dns.rcode.REFUSED
    assert events[0].verdict == "overload"


async def tcp_exchange(proxy, *wires: bytes, timeout: float = 10.0) -> list[dns.message.Message]:
    reader, writer = await asyncio.open_connection(*proxy)
    try:
        for w in wires:
            writer.write(len(w).to_bytes(2, "big") + w)
        await writer.drain()
        out = []
        for _ in wires:
            head = await asyncio.wait_for(reader.readexactly(2), timeout)
            out.append(dns.message.from_wire(await reader.readexactly(int.from_bytes(head, "big"))))
        return out
    finally:
        writer.close()


async def test_over_tcp_queries_on_one_connection_are_answered_in_order(dnsmasq, tcp_proxy_for):
    rules = Rules(dnsmasq.addr)
    addr, events = await tcp_proxy_for(rules)
    allowed = dns.message.make_query("allowed.test", "A")
    denied = dns.message.make_query("other.test", "A")
    a, d = await tcp_exchange(addr, allowed.to_wire(), denied.to_wire())
    assert a.id == allowed.id and [rr.address for rrset in a.answer for rr in rrset] == [NAMES["allowed.test"]]
    assert d.id == denied.id and d.rcode() == dns.rcode.REFUSED and not d.answer
    assert [e.verdict for e in events] == ["allowed", "denied"]
    assert rules.learned_at and rules.learned_at[0][1] == "allowed.test."


async def test_over_tcp_a_broken_frame_closes_the_connection(dnsmasq, tcp_proxy_for):
    addr, _ = await tcp_proxy_for(Rules(dnsmasq.addr))
    reader, writer = await asyncio.open_connection(*addr)
    try:
        writer.write(b"\x00\x40" + b"\x01" * 10)  # announces 64 octets, sends 10, then ends
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
